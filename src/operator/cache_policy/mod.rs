//! The CachePolicy reconciler: from the policy and the instances it selects, compute the
//! routing table, purge stale copies from instances about to serve ranges again, publish the
//! routing ConfigMap (server-side apply, owned by the policy, version bumped only when the
//! content changes), and report status, Events and metrics.
//!
//! Pipeline: fetch (instances from the cache, previous table from the ConfigMap) → plan
//! ([`routing::plan_routing`], pure) → prepare (purge) → publish → status ([`status`], pure).

pub mod job;
pub mod rebalance;
pub mod routing;
pub mod status;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::FIELD_MANAGER;
use crate::api::cache_policy::{
    CachePolicy, JOB_OWNED_REBALANCE_FIELDS, REBALANCE_NOW_ANNOTATION, RebalanceStatus,
    config_map_name, rebalance_phase, rebalance_step, selects,
};
use crate::api::redis_instance::{InstancePhase, RedisInstance, TIER_LABEL};
use crate::redis::endpoint::endpoint_of;
use crate::redis::keys::delete_ranges;
use crate::routing::config_map::{annotated_version, table_of};
use crate::routing::keyspace::Resolver;
use crate::routing::slots::SlotRange;
use crate::routing::table::{RoutingTable, TABLE_KEY, VERSION_ANNOTATION};

use super::context::Context;
use super::metrics::PolicyLabels;
use routing::{InstanceView, plan_routing};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "CachePolicy";

/// Periodic reconcile: refreshes recommendations and catches anything a watch missed.
const RESYNC: Duration = Duration::from_secs(30);

/// Reconcile errors; metric labels use the variant name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace.
    #[error("CachePolicy has no namespace")]
    MissingNamespace,
    /// Reading or writing the routing ConfigMap failed.
    #[error("routing ConfigMap {name}: {source}")]
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Stale copies could not be removed from an instance that is about to serve them.
    #[error("purging stale keys on {instance} before routing to it: {message}")]
    Purge {
        /// Instance.
        instance: String,
        /// Cause (credentials redacted).
        message: String,
    },
    /// Writing status failed.
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    /// Creating or reading a rebalance Job failed.
    #[error("rebalance Job: {0}")]
    Rebalance(#[source] kube::Error),
}

impl Error {
    /// The variant name, for metrics.
    pub fn variant(&self) -> &'static str {
        match self {
            Self::MissingNamespace => "MissingNamespace",
            Self::ConfigMap { .. } => "ConfigMap",
            Self::Purge { .. } => "Purge",
            Self::WriteStatus(_) => "WriteStatus",
            Self::Rebalance(_) => "Rebalance",
        }
    }
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

/// Policies of the instance's namespace that select it (the trigger mapping).
pub fn policies_selecting(
    ctx_policies: &kube::runtime::reflector::Store<CachePolicy>,
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

/// Reads the table in the routing ConfigMap: `(table, version)`; the version survives a table
/// this build cannot parse, so versions keep increasing.
async fn read_published(
    api: &Api<ConfigMap>,
    name: &str,
) -> Result<(Option<RoutingTable>, u64), Error> {
    let cm = api.get_opt(name).await.map_err(|source| Error::ConfigMap {
        name: name.to_owned(),
        source,
    })?;
    let Some(cm) = cm else {
        return Ok((None, 0));
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
    Ok((table, version))
}

/// Reconciles one CachePolicy.
#[tracing::instrument(skip_all, fields(policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default()))]
pub async fn reconcile(policy: Arc<CachePolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer(CONTROLLER);
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let name = policy.name_any();
    // The cache may not hold our own last status write yet; the rebalance state machine must
    // never act on an older one (it would plan twice or forget a running Job).
    let policy = if policy.spec.balancing.rebalance.enabled {
        let api: Api<CachePolicy> = Api::namespaced(ctx.client.clone(), &namespace);
        match api.get_opt(&name).await.map_err(Error::WriteStatus)? {
            Some(fresh) => Arc::new(fresh),
            None => return Ok(Action::await_change()),
        }
    } else {
        policy
    };
    let cm_name = config_map_name(&policy);
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);

    let selected = selected_instances(&ctx, &policy, &namespace);
    let views: Vec<InstanceView> = selected.iter().map(|ri| view_of(ri, &namespace)).collect();
    ctx.record_usage(&namespace, &views);
    let (previous, previous_version) = read_published(&cm_api, &cm_name).await?;
    let key = format!("{namespace}/{name}");
    let planned = plan_routing(&key, &policy.spec, &views, previous.as_ref());

    let rebalance_on = policy.spec.balancing.rebalance.enabled;
    let mut rb = policy.status.as_ref().and_then(|s| s.rebalance.clone());
    let mut published = previous.clone();
    let mut published_now = false;
    let mut publish_error = None;
    let mut desired = None;
    match planned.table {
        None => {
            publish_error = Some(if views.is_empty() {
                "no RedisInstance is selected by spec.instanceSelector".to_owned()
            } else {
                "no selected instance is usable yet (healthy, with a known capacity)".to_owned()
            });
        }
        Some(planned_table) => {
            // With rebalancing on, owners change only through a rebalance (with their data).
            let mut table = if rebalance_on {
                rebalance::hold_back(&planned_table, previous.as_ref(), &views)
            } else {
                planned_table.clone()
            };
            desired = Some(planned_table);
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
            let transition = shape_for_rebalance(&mut table, rb.as_ref(), previous_version + 1);
            let changed = previous
                .as_ref()
                .is_none_or(|p| p.content_hash() != table.content_hash());
            if changed {
                table.version = previous_version + 1;
                prepare_targets(&ctx, &namespace, &selected, previous.as_ref(), &table).await?;
                publish(&cm_api, &policy, &cm_name, &table).await?;
                info!(version = table.version, configmap = %cm_name, "published routing table");
                publish_events(&ctx, &policy, previous.as_ref(), &table).await;
                cleanup_sources(&ctx, &namespace, &selected, previous.as_ref(), &table).await;
                if let (Some(r), Some(t)) = (rb.as_mut(), transition) {
                    let version = i64::try_from(table.version).unwrap_or(i64::MAX);
                    match t {
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
                published = Some(table);
                published_now = true;
            } else if previous_version > 0
                && previous
                    .as_ref()
                    .is_some_and(|p| p.version != previous_version)
            {
                // Keep the annotation and the table's own version in step.
                table.version = previous_version;
                publish(&cm_api, &policy, &cm_name, &table).await?;
                published = Some(table);
            }
        }
    }

    // Samples (memory per category, sidecar heartbeats), then rebalance Jobs.
    // Planning needs a sample taken after the memory change that woke us; while a Job runs,
    // the sample only feeds status.
    let planning = rebalance_on && rb.as_ref().is_none_or(|r| !rebalance::is_active(r));
    let max_age = if planning {
        Duration::ZERO
    } else {
        Duration::from_secs(5)
    };
    let sample = match &published {
        Some(t) => ctx.sample(&key, &namespace, &selected, t, max_age).await,
        None => PolicySample::default(),
    };
    debug!(categories = ?sample.category_bytes, sidecars = sample.sidecars.len(), "sampled");
    if rebalance_on && let (Some(table), Some(desired)) = (&published, &desired) {
        rb = drive_rebalance(&ctx, &policy, rb, table, desired, &views, &sample).await?;
        debug!(rebalance = ?rb.as_ref().map(|r| (&r.phase, r.plan_id, &r.job)), "rebalance driven");
    }

    let labels = PolicyLabels {
        namespace: namespace.clone(),
        policy: name.clone(),
    };
    if let Some(t) = &published {
        ctx.metrics
            .routing_version
            .get_or_create(&labels)
            .set(i64::try_from(t.version).unwrap_or(i64::MAX));
        ctx.metrics
            .failovers
            .get_or_create(&labels)
            .set(t.failover.len() as i64);
    }

    let growth = ctx.growth(&namespace, &views);
    let observation = status::PolicyObservation {
        now: Timestamp::now(),
        generation: policy.metadata.generation,
        config_map: &cm_name,
        published: published.as_ref(),
        published_now,
        publish_error,
        instances: &views,
        problems: &planned.problems,
        threshold: policy.spec.balancing.capacity_threshold,
        growth: &growth,
    };
    let mut next = status::policy_status(policy.status.as_ref(), &observation);
    next.rebalance = rb;
    next.usage = sample.usage();
    next.sidecars = sample.sidecars(published.as_ref());
    status::set_rebalancing_condition(&mut next, policy.metadata.generation, Timestamp::now());
    if let Some(r) = &next.rebalance {
        ctx.metrics
            .rebalance_keys_moved
            .get_or_create(&labels)
            .set(r.keys_moved.unwrap_or(0));
        ctx.metrics
            .rebalance_keys_total
            .get_or_create(&labels)
            .set(r.keys_total.unwrap_or(0));
    }
    if let Some(s) = &next.sidecars {
        ctx.metrics
            .sidecars
            .get_or_create(&labels)
            .set(i64::from(s.count));
        if let Some(v) = s.min_version {
            ctx.metrics
                .sidecar_min_version
                .get_or_create(&labels)
                .set(v);
        }
    }
    if policy.status.as_ref() != Some(&next) {
        let api: Api<CachePolicy> = Api::namespaced(ctx.client.clone(), &namespace);
        let mut body = serde_json::to_value(&next)
            .map_err(|e| Error::WriteStatus(kube::Error::SerdeError(e)))?;
        // The Job's progress fields are the Job's: never write them back.
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
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::WriteStatus)?;
        debug!("status written");
    }
    Ok(Action::requeue(RESYNC))
}

/// Requeues after an error with a short delay.
pub fn error_policy(policy: Arc<CachePolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_error(CONTROLLER, error.variant());
    Action::requeue(Duration::from_secs(2))
}

async fn publish(
    api: &Api<ConfigMap>,
    policy: &CachePolicy,
    name: &str,
    table: &RoutingTable,
) -> Result<(), Error> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: policy.namespace(),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "redis-fleet".to_owned(),
                    ),
                    ("redisfleet.io/policy".to_owned(), policy.name_any()),
                ]
                .into(),
            ),
            annotations: Some([(VERSION_ANNOTATION.to_owned(), table.version.to_string())].into()),
            owner_references: policy.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some([(TABLE_KEY.to_owned(), table.to_json())].into()),
        ..ConfigMap::default()
    };
    let mut body = serde_json::to_value(&cm).map_err(|e| Error::ConfigMap {
        name: name.to_owned(),
        source: kube::Error::SerdeError(e),
    })?;
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("ConfigMap");
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::ConfigMap {
        name: name.to_owned(),
        source,
    })?;
    Ok(())
}

/// Deletes, on every reachable instance, the keys of the ranges it is about to serve but did
/// not serve before: leftovers from an earlier failover or ownership must not be read.
async fn prepare_targets(
    ctx: &Context,
    namespace: &str,
    selected: &[Arc<RedisInstance>],
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
) -> Result<(), Error> {
    let fresh = routing::stale_before_publishing(previous, next);
    if fresh.is_empty() || previous.is_none() {
        // The very first table: nothing routed anywhere before, nothing can be stale.
        return Ok(());
    }
    let resolver = Resolver::new(next.clone()).map_err(|e| Error::Purge {
        instance: String::new(),
        message: e.to_string(),
    })?;
    for (instance, ranges) in fresh {
        let Some(ri) = selected.iter().find(|ri| ri.name_any() == instance) else {
            continue;
        };
        let deleted = purge(ctx, namespace, ri, &resolver, &ranges)
            .await
            .map_err(|message| Error::Purge {
                instance: instance.clone(),
                message,
            })?;
        if deleted > 0 {
            info!(%instance, deleted, "removed stale copies before routing ranges to the instance");
        }
    }
    Ok(())
}

/// Best effort: after publishing, free the copies of ranges an instance no longer serves
/// (e.g. what a fallback instance held during a failover that ended).
async fn cleanup_sources(
    ctx: &Context,
    namespace: &str,
    selected: &[Arc<RedisInstance>],
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
) {
    let Some(previous) = previous else { return };
    let gone = routing::newly_served(Some(next), previous);
    let Ok(resolver) = Resolver::new(previous.clone()) else {
        return;
    };
    for (instance, ranges) in gone {
        let Some(ri) = selected.iter().find(|ri| ri.name_any() == instance) else {
            continue;
        };
        let phase = ri.status.as_ref().and_then(|s| s.phase);
        if !matches!(phase, Some(p) if p.serves_traffic()) {
            continue;
        }
        match purge(ctx, namespace, ri, &resolver, &ranges).await {
            Ok(n) if n > 0 => {
                info!(%instance, deleted = n, "freed copies of ranges the instance no longer serves")
            }
            Ok(_) => {}
            Err(e) => {
                warn!(%instance, error = %e, "could not free copies of ranges the instance no longer serves")
            }
        }
    }
}

/// Deletes the keys of `ranges` (by category) on one instance.
async fn purge(
    ctx: &Context,
    namespace: &str,
    ri: &RedisInstance,
    resolver: &Resolver,
    ranges: &[(String, SlotRange)],
) -> Result<u64, String> {
    let target = ctx
        .secrets
        .target_of(ri, namespace)
        .await
        .map_err(|e| e.to_string())?;
    let timeout = ri.spec.health.timeout.get().max(Duration::from_secs(1));
    let instance = ObjectRef::from_obj(ri);
    let mut conn = ctx.connection(&instance, &target, timeout).await?;
    let mut by_category: BTreeMap<&str, Vec<SlotRange>> = BTreeMap::new();
    for (cat, r) in ranges {
        by_category.entry(cat.as_str()).or_default().push(*r);
    }
    let mut deleted = 0;
    for (cat, rs) in by_category {
        let Some(id) = resolver.categories().iter().position(|c| c.name == cat) else {
            continue;
        };
        deleted += delete_ranges(&mut conn, resolver, id as u16, &rs)
            .await
            .map_err(|e| {
                ctx.drop_connection(&instance);
                crate::redis::connect::redact(&e.to_string(), &target.credentials)
            })?;
    }
    Ok(deleted)
}

/// Events for a newly published table: what changed, and failovers starting or ending.
async fn publish_events(
    ctx: &Context,
    policy: &CachePolicy,
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
) {
    let reference = policy.object_ref(&());
    let mut events = vec![Event {
        type_: EventType::Normal,
        reason: "RoutingPublished".to_owned(),
        note: Some(describe_change(previous, next)),
        action: "Publish".to_owned(),
        secondary: None,
    }];
    let pairs = |t: Option<&RoutingTable>| -> BTreeMap<(String, String), Vec<String>> {
        let mut m: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for f in t.map(|t| t.failover.as_slice()).unwrap_or_default() {
            let cats = m.entry((f.from.clone(), f.to.clone())).or_default();
            if !cats.contains(&f.category) {
                cats.push(f.category.clone());
            }
        }
        m
    };
    let (before, after) = (pairs(previous), pairs(Some(next)));
    for ((from, to), cats) in &after {
        if !before.contains_key(&(from.clone(), to.clone())) {
            events.push(Event {
                type_: EventType::Warning,
                reason: "FailoverStarted".to_owned(),
                note: Some(format!(
                    "{from} is unreachable: {} now served by {to}",
                    cats.join(", ")
                )),
                action: "Failover".to_owned(),
                secondary: None,
            });
        }
    }
    for ((from, to), cats) in &before {
        if !after.contains_key(&(from.clone(), to.clone())) {
            events.push(Event {
                type_: EventType::Normal,
                reason: "FailoverEnded".to_owned(),
                note: Some(format!(
                    "{from} serves {} again (was {to})",
                    cats.join(", ")
                )),
                action: "Failback".to_owned(),
                secondary: None,
            });
        }
    }
    for event in events {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "recording an event failed");
        }
    }
}

/// A one-line summary of what changed between two tables.
pub fn describe_change(previous: Option<&RoutingTable>, next: &RoutingTable) -> String {
    let Some(prev) = previous else {
        return format!(
            "version {}: {} categories on {} instances",
            next.version,
            next.categories.len(),
            next.instances.len()
        );
    };
    let mut parts = Vec::new();
    let mut moved: BTreeMap<(String, String), u32> = BTreeMap::new();
    for c in &next.categories {
        if let Some(p) = prev.category(&c.name) {
            for (a, b) in p.owners().iter().zip(c.owners()) {
                if *a != b {
                    *moved.entry(((*a).to_owned(), b.to_owned())).or_default() += 1;
                }
            }
        }
    }
    for ((from, to), n) in moved {
        parts.push(format!("{n} slots from {from} to {to}"));
    }
    if next.failover != prev.failover {
        parts.push(format!("{} failover ranges", next.failover.len()));
    }
    let spec_changed = next
        .categories
        .iter()
        .map(|c| (&c.name, &c.prefixes, c.ttl))
        .ne(prev
            .categories
            .iter()
            .map(|c| (&c.name, &c.prefixes, c.ttl)));
    if spec_changed {
        parts.push("categories or TTL rules changed".to_owned());
    }
    if next.instances != prev.instances {
        parts.push("instance endpoints changed".to_owned());
    }
    if parts.is_empty() {
        parts.push("content changed".to_owned());
    }
    format!("version {}: {}", next.version, parts.join(", "))
}

/// What a publish does to a rebalance in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    /// The migrating ranges go out.
    Flip,
    /// The new owners go out.
    Finalize,
}

/// Shapes the table to publish for the rebalance phase (see [`rebalance`]).
fn shape_for_rebalance(
    table: &mut RoutingTable,
    rb: Option<&RebalanceStatus>,
    next_version: u64,
) -> Option<Transition> {
    let r = rb.filter(|r| rebalance::is_active(r))?;
    let moves = rebalance::from_status(&r.moves);
    let step = r.step.as_deref();
    // Moves into ranges their target already serves (a legacy instance emptied into the
    // fleet) have nothing to prepare: they go out at once, so the sidecars find those keys.
    let nothing_to_prepare = moves
        .iter()
        .all(|m| crate::rebalance::plan::target_serves(table, &m.category, m.range, &m.to));
    match r.phase.as_str() {
        rebalance_phase::PREPARING
            if step == Some(rebalance_step::PREPARED) || nothing_to_prepare =>
        {
            rebalance::overlay_migrating(table, &moves, next_version);
            Some(Transition::Flip)
        }
        rebalance_phase::MIGRATING if step == Some(rebalance_step::COPIED) => {
            *table = rebalance::finalize(table, &moves);
            Some(Transition::Finalize)
        }
        rebalance_phase::MIGRATING => {
            let epoch = r
                .flip_version
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(next_version);
            rebalance::overlay_migrating(table, &moves, epoch);
            None
        }
        rebalance_phase::FINALIZING => {
            *table = rebalance::finalize(table, &moves);
            None
        }
        _ => None,
    }
}

/// Attempts of one plan before it is given up.
const MAX_ATTEMPTS: i32 = 4;

/// Follows the Job of the rebalance in progress, or plans and starts a new one.
async fn drive_rebalance(
    ctx: &Context,
    policy: &CachePolicy,
    rb: Option<RebalanceStatus>,
    published: &RoutingTable,
    desired: &RoutingTable,
    views: &[InstanceView],
    sample: &PolicySample,
) -> Result<Option<RebalanceStatus>, Error> {
    use k8s_openapi::api::batch::v1::Job;
    let settings = &ctx.jobs;
    let policy_ns = policy.namespace().unwrap_or_default();
    let job_ns = settings
        .namespace
        .clone()
        .unwrap_or_else(|| policy_ns.clone());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &job_ns);
    let reference = policy.object_ref(&());
    let forced = policy
        .annotations()
        .get(REBALANCE_NOW_ANNOTATION)
        .filter(|v| rb.as_ref().is_none_or(|r| r.forced_by.as_ref() != Some(*v)))
        .cloned();

    if let Some(mut r) = rb.clone().filter(rebalance::is_active) {
        let Some(name) = r.job.clone() else {
            return Ok(Some(r));
        };
        let existing = jobs.get_opt(&name).await.map_err(Error::Rebalance)?;
        let outcome = existing.as_ref().and_then(job::outcome);
        match (existing, outcome) {
            (None, _) => {
                create_job(&jobs, policy, &r, settings).await?;
            }
            (Some(_), Some(true)) if r.phase == rebalance_phase::FINALIZING => {
                r.phase = rebalance_phase::SUCCEEDED.to_owned();
                r.finished_at = Some(crate::api::conditions::Time(Timestamp::now()));
                r.message = None;
                event(
                    ctx,
                    &reference,
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
            (Some(_), Some(_)) => {
                // Failed (or ended before finishing): retry with a fresh Job, up to a limit.
                ctx.metrics
                    .rebalance_failures
                    .get_or_create(&PolicyLabels {
                        namespace: policy_ns.clone(),
                        policy: policy.name_any(),
                    })
                    .inc();
                if r.attempts >= MAX_ATTEMPTS && forced.is_none() {
                    r.phase = rebalance_phase::FAILED.to_owned();
                    r.finished_at = Some(crate::api::conditions::Time(Timestamp::now()));
                    r.message = Some(format!(
                        "gave up after {} attempts; the ranges already flipped keep moving on access. Set the {REBALANCE_NOW_ANNOTATION} annotation to try again",
                        r.attempts
                    ));
                    event(
                        ctx,
                        &reference,
                        "RebalanceFailed",
                        true,
                        r.message.clone().unwrap_or_default(),
                    )
                    .await;
                } else {
                    r.attempts = if forced.is_some() { 1 } else { r.attempts + 1 };
                    if forced.is_some() {
                        r.forced_by = forced.clone();
                    }
                    r.job = Some(job::job_name(&policy.name_any(), r.plan_id, r.attempts));
                    create_job(&jobs, policy, &r, settings).await?;
                    event(
                        ctx,
                        &reference,
                        "RebalanceRetried",
                        true,
                        format!("attempt {} of plan {}", r.attempts, r.plan_id),
                    )
                    .await;
                }
            }
            (Some(_), None) => {}
        }
        return Ok(Some(r));
    }
    // A failed plan whose ranges were already flipped is resumed only on request.
    if let Some(r) = rb
        .as_ref()
        .filter(|r| r.phase == rebalance_phase::FAILED && r.flip_version.is_some())
        && forced.is_none()
    {
        return Ok(Some(r.clone()));
    }

    // Nothing running: plan.
    let cooldown = policy.spec.balancing.rebalance.cooldown.get();
    let cooled = rb
        .as_ref()
        .and_then(|r| r.finished_at.as_ref())
        .is_none_or(|t| Timestamp::now().duration_since(t.0).unsigned_abs() >= cooldown);
    let mut moves = rebalance::failback_moves(published, views);
    let mut reasons = Vec::new();
    if !moves.is_empty() {
        reasons.push(
            "failback: recovered instances take their ranges back, with the data written meanwhile"
                .to_owned(),
        );
    }
    if cooled || forced.is_some() {
        let loads: Vec<crate::rebalance::plan::InstanceLoad> = views
            .iter()
            .map(|v| crate::rebalance::plan::InstanceLoad {
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
            .collect();
        let mut tiers: Vec<crate::rebalance::plan::CategoryTiers> = policy
            .spec
            .categories
            .iter()
            .map(|c| crate::rebalance::plan::CategoryTiers {
                name: c.name.clone(),
                tier: c.tier.clone(),
                fallback_tier: c.fallback_tier.clone(),
            })
            .collect();
        tiers.push(crate::rebalance::plan::CategoryTiers {
            name: crate::api::cache_policy::DEFAULT_CATEGORY.to_owned(),
            tier: policy.spec.default_category.tier.clone(),
            fallback_tier: policy.spec.default_category.fallback_tier.clone(),
        });
        let input = crate::rebalance::plan::PlanInput {
            current: published,
            desired: Some(desired),
            instances: &loads,
            category_bytes: &sample.category_bytes,
            categories: &tiers,
            threshold_percent: u32::try_from(policy.spec.balancing.capacity_threshold)
                .unwrap_or(80),
            force: forced.is_some(),
        };
        let planned = crate::rebalance::plan::plan(&input);
        debug!(instances = ?loads, bytes = ?sample.category_bytes, plan = ?planned, "planned");
        if let Some(plan) = planned {
            reasons.push(plan.reason.clone());
            moves.extend(plan.moves);
        }
    }
    // Emptying a legacy instance does not wait for the cooldown either.
    let legacy = rebalance::legacy_moves(published, views, &sample.category_bytes);
    if !legacy.is_empty() {
        reasons.push("draining instances hold data of the policy's categories".to_owned());
        moves.extend(legacy);
    }
    let moves = rebalance::without_overlaps(moves);
    if moves.is_empty() {
        if forced.is_some() {
            // Remember the request even when nothing needed to move.
            let mut r = rb.unwrap_or_default();
            r.forced_by = forced;
            if r.phase.is_empty() {
                r.phase = rebalance_phase::SUCCEEDED.to_owned();
            }
            return Ok(Some(r));
        }
        return Ok(rb);
    }
    let plan_id = i64::try_from(published.version).unwrap_or(i64::MAX);
    let r = RebalanceStatus {
        phase: rebalance_phase::PREPARING.to_owned(),
        plan_id,
        job: Some(job::job_name(&policy.name_any(), plan_id, 1)),
        reason: Some(reasons.join("; ")),
        moves: rebalance::to_status(&moves),
        attempts: 1,
        started_at: Some(crate::api::conditions::Time(Timestamp::now())),
        forced_by: forced.or_else(|| rb.as_ref().and_then(|r| r.forced_by.clone())),
        ..RebalanceStatus::default()
    };
    // The progress of an earlier plan must not be read as this one's.
    let api: Api<CachePolicy> = Api::namespaced(ctx.client.clone(), &policy_ns);
    let clear = json!({"status": {"rebalance": {
        "phase": rebalance_phase::PREPARING, "planId": plan_id,
        "step": null, "keysMoved": null, "keysTotal": null, "keysPerSecond": null, "stragglers": null,
    }}});
    api.patch_status(
        &policy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&clear),
    )
    .await
    .map_err(Error::WriteStatus)?;
    create_job(&jobs, policy, &r, settings).await?;
    info!(
        plan = plan_id,
        moves = moves.len(),
        reason = r.reason.as_deref().unwrap_or_default(),
        "rebalance started"
    );
    event(
        ctx,
        &reference,
        "RebalanceStarted",
        false,
        format!(
            "plan {plan_id}: {} moves ({})",
            moves.len(),
            r.reason.clone().unwrap_or_default()
        ),
    )
    .await;
    Ok(Some(r))
}

async fn create_job(
    jobs: &Api<k8s_openapi::api::batch::v1::Job>,
    policy: &CachePolicy,
    r: &RebalanceStatus,
    settings: &job::JobSettings,
) -> Result<(), Error> {
    let job = job::build(policy, r.plan_id, r.attempts, settings);
    match jobs.create(&kube::api::PostParams::default(), &job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::Rebalance(e)),
    }
}

async fn event(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    warning: bool,
    note: String,
) {
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
    if let Err(e) = ctx.recorder.publish(&ev, reference).await {
        warn!(error = %e, "recording an event failed");
    }
}

/// What sampling the instances of a policy found.
#[derive(Debug, Clone, Default)]
pub struct PolicySample {
    /// Estimated bytes per (category, instance).
    pub category_bytes: BTreeMap<(String, String), u64>,
    /// Live sidecars (id → table version), over all instances.
    pub sidecars: BTreeMap<String, u64>,
}

impl PolicySample {
    /// As `status.usage`.
    pub fn usage(&self) -> Vec<crate::api::cache_policy::CategoryUsage> {
        self.category_bytes
            .iter()
            .map(
                |((category, instance), bytes)| crate::api::cache_policy::CategoryUsage {
                    instance: instance.clone(),
                    category: category.clone(),
                    bytes: i64::try_from(*bytes).unwrap_or(i64::MAX),
                },
            )
            .collect()
    }

    /// As `status.sidecars`.
    pub fn sidecars(
        &self,
        _table: Option<&RoutingTable>,
    ) -> Option<crate::api::cache_policy::SidecarsStatus> {
        if self.sidecars.is_empty() {
            return None;
        }
        Some(crate::api::cache_policy::SidecarsStatus {
            count: i32::try_from(self.sidecars.len()).unwrap_or(i32::MAX),
            min_version: self
                .sidecars
                .values()
                .min()
                .map(|v| i64::try_from(*v).unwrap_or(i64::MAX)),
        })
    }
}

/// Samples every serving instance of the table (and draining ones) through `ctx`.
pub async fn sample_instances(
    ctx: &Context,
    namespace: &str,
    selected: &[Arc<RedisInstance>],
    table: &RoutingTable,
) -> PolicySample {
    let mut out = PolicySample::default();
    let Ok(resolver) = Resolver::new(table.clone()) else {
        return out;
    };
    for ri in selected {
        let name = ri.name_any();
        let in_table = table.instances.contains_key(&name);
        if !in_table && !ri.spec.drain {
            continue;
        }
        let phase = ri.status.as_ref().and_then(|s| s.phase);
        if !matches!(phase, Some(p) if p.serves_traffic()) {
            continue;
        }
        let Ok(target) = ctx.secrets.target_of(ri, namespace).await else {
            continue;
        };
        let instance = ObjectRef::from_obj(&**ri);
        let Ok(mut conn) = ctx
            .connection(&instance, &target, Duration::from_secs(2))
            .await
        else {
            continue;
        };
        match crate::redis::sample::sample_categories(
            &mut conn,
            &resolver,
            crate::redis::sample::SAMPLE_KEYS,
        )
        .await
        {
            Ok(s) => {
                for (cat, bytes) in s.category_bytes {
                    out.category_bytes.insert((cat, name.clone()), bytes);
                }
            }
            Err(e) => {
                ctx.drop_connection(&instance);
                warn!(instance = %name, error = %crate::redis::connect::redact(&e.to_string(), &target.credentials), "sampling failed");
                continue;
            }
        }
        match crate::redis::heartbeat::read(&mut conn).await {
            Ok(beats) => {
                for (id, v) in beats {
                    let e = out.sidecars.entry(id).or_insert(v);
                    *e = (*e).min(v);
                }
            }
            Err(_) => ctx.drop_connection(&instance),
        }
    }
    out
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
                status::growth_per_hour(&samples).map(|g| (v.name.clone(), g))
            })
            .collect()
    }
}
