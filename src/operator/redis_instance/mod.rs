//! The RedisInstance reconciler: apply a managed instance's objects, probe the instance every
//! `spec.health.interval`, write its status (at once when it changed materially, else once per
//! refresh interval: [`status::write_decision`]), record Events on phase changes and threshold
//! crossings, and export every probe's figures as metrics.
//!
//! The pipeline is fetch → build → apply → probe → status; `build` and `status` are pure.

pub mod build;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::FIELD_MANAGER;
use crate::api::cache_policy::selects;
use crate::api::redis_instance::{
    InstancePhase, Names, RedisInstance, RedisInstanceStatus, evicts_keys_without_ttl,
};
use crate::redis::connect::Target;
use crate::redis::endpoint::{self, endpoint_of};
use crate::redis::info::{Counters, window};
use crate::redis::probe::{classify, probe_on, timed_out};

use super::context::Context;
use super::metrics::{InstanceLabels, RedisCounters, error_variants};
use super::status_writes::{fleet_refresh, refresh_interval};
use status::{Failure, Observation, ProbeSummary, Transition, WindowStats};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "RedisInstance";

/// Default capacity threshold when no CachePolicy selects the instance.
pub const DEFAULT_CAPACITY_THRESHOLD: i32 = 80;

/// Reconcile errors; metric labels use the variant name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace (it is namespaced; this means a broken cache entry).
    #[error("RedisInstance has no namespace")]
    MissingNamespace,
    /// Applying a managed child failed.
    #[error("applying {kind} {name}: {source}")]
    ApplyChild {
        /// Kind of the child.
        kind: &'static str,
        /// Name of the child.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Writing status failed.
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
}

error_variants!(Error {
    MissingNamespace,
    ApplyChild,
    WriteStatus,
});

/// What the RedisInstance controller shares and remembers between reconciles: the scope's
/// handles and each instance's probe state.
pub struct InstanceContext {
    /// The scope's shared handles.
    pub shared: Arc<Context>,
    /// How often an unchanged status is rewritten (before the per-instance spread).
    pub status_refresh: Duration,
    probes: Mutex<HashMap<ObjectRef<RedisInstance>, Arc<tokio::sync::Mutex<InstanceState>>>>,
}

impl std::fmt::Debug for InstanceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceContext").finish_non_exhaustive()
    }
}

/// In-memory state of one instance between probes.
#[derive(Debug, Default)]
pub struct InstanceState {
    /// When the last probe ran.
    pub last_probe: Option<Instant>,
    /// Generation and target fingerprint of the last probe: a change probes at once.
    pub last_basis: Option<(Option<i64>, u64)>,
    /// Counters of the last good probe, for window rates.
    pub last_counters: Option<(Instant, Counters)>,
    /// The status computed at the last probe: the phase rules' memory (failure and success
    /// counts), newer than what was written.
    pub last_status: Option<RedisInstanceStatus>,
    /// The status this process last wrote, and when.
    pub written: Option<(Instant, RedisInstanceStatus)>,
    /// A managed instance's StatefulSet: the pod template's config hash it carries, once read
    /// (`Some(None)`: there is none yet).
    pub live_config_hash: Option<Option<String>>,
    /// Why the last `CONFIG SET maxmemory-policy` was not made (logged once per change).
    pub policy_not_applied: Option<String>,
}

impl InstanceContext {
    /// The controller's context in a scope.
    pub fn new(shared: Arc<Context>, status_refresh: Duration) -> Self {
        Self {
            shared,
            status_refresh,
            probes: Mutex::new(HashMap::new()),
        }
    }

    /// The probe state of `instance` (created on first use).
    pub fn instance_state(
        &self,
        instance: &ObjectRef<RedisInstance>,
    ) -> Arc<tokio::sync::Mutex<InstanceState>> {
        let mut map = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(instance.clone()).or_default().clone()
    }

    /// Drops the state (and the kept connection) of instances that no longer exist. (Their
    /// metric series go by the metrics' own list: see the janitor in `operator::run_scope`.)
    pub fn forget_deleted_instances(&self) {
        let mut map = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<_> = map
            .keys()
            .filter(|r| self.shared.instances.get(r).is_none())
            .cloned()
            .collect();
        for r in &gone {
            map.remove(r);
            self.shared.connections.drop_connection(r);
        }
    }
}

/// Reconciles one RedisInstance.
#[tracing::instrument(skip_all, fields(instance = %ri.name_any(), namespace = ri.namespace().unwrap_or_default()))]
pub async fn reconcile(
    ri: Arc<RedisInstance>,
    ictx: Arc<InstanceContext>,
) -> Result<Action, Error> {
    let ctx = &ictx.shared;
    let _timer = ctx.metrics.reconcile_timer(CONTROLLER);
    let namespace = ri.namespace().ok_or(Error::MissingNamespace)?;
    let name = ri.name_any();
    let state = ictx.instance_state(&ObjectRef::from_obj(ri.as_ref()));
    let mut state = state.lock().await;
    let health = &ri.spec.health;
    let interval = health.interval.get();

    let managed_ready = match &ri.spec.managed {
        Some(_) => Some(apply_managed(&ri, &namespace, ctx, &mut state).await?),
        None => None,
    };

    let reached_at = endpoint_of(&ri, &namespace);
    let target = endpoint::target(&reached_at, &ctx.secrets.in_namespace(&namespace)).await;
    let basis = (
        ri.metadata.generation,
        target.as_ref().map_or(0, Target::fingerprint),
    );
    if let Some(last) = state.last_probe {
        let since = last.elapsed();
        // A probe is due every interval, or at once when the spec or credentials changed.
        if since < interval.mul_f64(0.9) && state.last_basis == Some(basis) {
            return Ok(Action::requeue(interval - since));
        }
    }
    state.last_basis = Some(basis);

    // When the Secrets cannot be read, status still shows where the instance is.
    let address = target
        .as_ref()
        .map_or_else(|_| reached_at.address(), Target::address);
    let labels = InstanceLabels {
        namespace: namespace.clone(),
        redis_instance: name.clone(),
    };
    let outcome = match &target {
        Ok(target) => {
            let instance = ObjectRef::from_obj(ri.as_ref());
            let mut outcome = probe(ctx, &instance, &mut state, target, health.timeout.get()).await;
            // A managed instance's eviction policy is applied live: a restart would empty it.
            if let (Ok(summary), Some(managed)) = (&mut outcome, &ri.spec.managed) {
                let wanted = managed.eviction_policy.as_redis();
                let applied = if summary.eviction_policy.as_deref() == Some(wanted) {
                    Ok(())
                } else {
                    let plan = moving_data_out(&ri, ctx);
                    apply_eviction_policy(
                        ctx,
                        &instance,
                        target,
                        health.timeout.get(),
                        wanted,
                        plan,
                    )
                    .await
                };
                match applied {
                    Ok(()) => {
                        if summary.eviction_policy.as_deref() != Some(wanted) {
                            info!(
                                from = summary.eviction_policy.as_deref().unwrap_or("unknown"),
                                to = wanted,
                                "maxmemory-policy applied to the running server"
                            );
                            summary.eviction_policy = Some(wanted.to_owned());
                        }
                        state.policy_not_applied = None;
                    }
                    Err(why) => {
                        if state.policy_not_applied.as_ref() != Some(&why) {
                            warn!(%why, "maxmemory-policy not applied");
                        }
                        state.policy_not_applied = Some(why);
                    }
                }
            }
            outcome
        }
        Err(e) => Err(Failure {
            reason: e.reason().to_owned(),
            message: e.to_string(),
        }),
    };
    state.last_probe = Some(Instant::now());
    record_probe_metrics(ctx, &labels, &outcome);

    let prev = state.last_status.clone().or_else(|| ri.status.clone());
    let observation = Observation {
        now: Timestamp::now(),
        generation: ri.metadata.generation,
        spec: &ri.spec,
        endpoint: address,
        outcome,
        managed_ready,
        capacity_threshold: capacity_threshold(&ri, ctx),
    };
    let next = status::next_status(prev.as_ref(), &observation);
    record_status_metrics(ctx, &labels, &next.status);

    // Compared with what was written last: by this process, else (after a restart) what the
    // object holds, as old as its lastProbeTime.
    let (written, age) = match &state.written {
        Some((at, written)) => (Some(written), Some(at.elapsed())),
        None => (
            ri.status.as_ref(),
            ri.status
                .as_ref()
                .and_then(|s| s.last_probe_time.as_ref())
                .and_then(|t| u64::try_from(observation.now.duration_since(t.0).as_secs()).ok())
                .map(Duration::from_secs),
        ),
    };
    let refresh = refresh_interval(
        fleet_refresh(ictx.status_refresh, ctx.instances.len()),
        &name,
    );
    let decision = status::write_decision(written, &next.status, age, refresh);
    ctx.metrics.status_write(CONTROLLER, decision.as_str());
    if decision.writes() {
        let api: Api<RedisInstance> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": "redisfleet.io/v1alpha1",
            "kind": "RedisInstance",
            "status": next.status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::WriteStatus)?;
        state.written = Some((Instant::now(), next.status.clone()));
        debug!(phase = ?next.status.phase, ?decision, "status written");
    }
    state.last_status = Some(next.status);
    drop(state);

    for transition in &next.transitions {
        publish(ctx, &ri, transition).await;
    }
    Ok(Action::requeue(interval))
}

/// Requeues after an error with a short delay; the next attempt probes again.
pub fn error_policy(ri: Arc<RedisInstance>, error: &Error, ctx: Arc<InstanceContext>) -> Action {
    warn!(instance = %ri.name_any(), %error, "reconcile failed");
    ctx.shared
        .metrics
        .reconcile_error(CONTROLLER, error.variant());
    Action::requeue(Duration::from_secs(5))
}

async fn probe(
    ctx: &Context,
    instance: &ObjectRef<RedisInstance>,
    state: &mut InstanceState,
    target: &Target,
    timeout: Duration,
) -> Result<ProbeSummary, Failure> {
    // The instance's one kept connection (shared with sampling and purging).
    let attempt = async {
        let mut conn = ctx
            .connections
            .connect(instance, target, timeout)
            .await
            .map_err(|e| classify(&e, target))?;
        probe_on(&mut conn, target).await
    };
    let outcome = tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(timed_out(target, timeout)));
    let probe = outcome.map_err(|e| {
        // A connection that saw an error may be half-broken; start afresh next time.
        ctx.connections.drop_connection(instance);
        Failure {
            reason: e.failure.reason().to_owned(),
            message: e.message,
        }
    })?;
    let now = Instant::now();
    let counters = probe.info.counters();
    let window = match (&state.last_counters, &counters) {
        (Some((then, prev)), Some(cur)) => {
            let w = window(prev, cur, now.duration_since(*then));
            Some(WindowStats {
                hits: w.hits,
                misses: w.misses,
                ops_per_second: w.ops_per_second.unwrap_or(0.0),
                evictions: w.evictions,
            })
        }
        _ => None,
    };
    state.last_counters = counters.map(|c| (now, c));
    let info = &probe.info;
    Ok(ProbeSummary {
        latency: probe.latency,
        redis_version: info.version().map(str::to_owned),
        used_bytes: info.used_memory.unwrap_or(0),
        maxmemory: info.maxmemory.unwrap_or(0),
        keys: info.total_keys(),
        connected_clients: info.connected_clients.unwrap_or(0),
        evicted_keys: info.evicted_keys.unwrap_or(0),
        eviction_policy: info.maxmemory_policy.clone(),
        counters: RedisCounters {
            commands_processed: info.total_commands_processed,
            keyspace_hits: info.keyspace_hits,
            keyspace_misses: info.keyspace_misses,
            evicted_keys: info.evicted_keys,
        },
        window,
    })
}

/// `CONFIG SET maxmemory-policy <wanted>` on the instance's kept connection. An `allkeys-*`
/// policy waits while `plan` (a rebalance plan that moves data out of the instance) runs: the
/// move's own keys, which carry no TTL, could be evicted under it (`docs/protocol.md`,
/// "Eviction"). The error says why it was not applied, free of credentials.
async fn apply_eviction_policy(
    ctx: &Context,
    instance: &ObjectRef<RedisInstance>,
    target: &Target,
    timeout: Duration,
    wanted: &str,
    plan: Option<String>,
) -> Result<(), String> {
    if let Some(plan) = plan.filter(|_| evicts_keys_without_ttl(wanted)) {
        return Err(format!(
            "{wanted} waits: {plan} moves data out of this instance"
        ));
    }
    let set = async {
        let mut conn = ctx.connections.connect(instance, target, timeout).await?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(wanted)
            .query_async::<()>(&mut conn)
            .await
    };
    match tokio::time::timeout(timeout, set).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("CONFIG SET maxmemory-policy {wanted}: {e}")),
        Err(_) => Err(format!("CONFIG SET maxmemory-policy {wanted}: timed out")),
    }
}

/// The active rebalance plan of a CachePolicy of the instance's namespace that moves data out
/// of it (`namespace/policy plan N`), if any.
fn moving_data_out(ri: &RedisInstance, ctx: &Context) -> Option<String> {
    let namespace = ri.namespace();
    let name = ri.name_any();
    ctx.policies.state().iter().find_map(|p| {
        let r = p.status.as_ref()?.rebalance.as_ref()?;
        (p.namespace() == namespace && r.is_active() && r.moves.iter().any(|m| m.from == name))
            .then(|| {
                format!(
                    "rebalance plan {} of CachePolicy {}/{}",
                    r.plan_id,
                    p.namespace().unwrap_or_default(),
                    p.name_any()
                )
            })
    })
}

/// The lowest capacity threshold among the CachePolicies of the namespace that select the
/// instance (the strictest one decides when a crossing is reported).
fn capacity_threshold(ri: &RedisInstance, ctx: &Context) -> i32 {
    let namespace = ri.namespace();
    ctx.policies
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && selects(p, ri))
        .map(|p| p.spec.balancing.capacity_threshold)
        .min()
        .unwrap_or(DEFAULT_CAPACITY_THRESHOLD)
}

/// Applies the managed children and returns whether the StatefulSet is ready.
async fn apply_managed(
    ri: &RedisInstance,
    namespace: &str,
    ctx: &Context,
    state: &mut InstanceState,
) -> Result<bool, Error> {
    let Some(managed) = &ri.spec.managed else {
        return Ok(false);
    };
    let client = ctx.client.clone();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if managed.password_secret_ref.is_none() {
        // Created once and never patched: re-applying would rotate the password under the
        // running Redis. AlreadyExists is the normal case.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = build::auth_secret(ri, &generate_password());
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => info!("generated the password Secret"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => {
                return Err(Error::ApplyChild {
                    kind: "Secret",
                    name: Names::of(&ri.name_any()).auth_secret,
                    source,
                });
            }
        }
    }
    // While a plan moves data out, the file holds back an evicting policy as `CONFIG SET`
    // does: a pod that restarts meanwhile must not boot with it.
    let running = ri
        .status
        .as_ref()
        .and_then(|s| s.eviction_policy.as_deref());
    let policy = build::file_policy(
        managed.eviction_policy,
        running,
        moving_data_out(ri, ctx).is_some(),
    );
    let cm = build::config_map(ri, managed, policy);
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), namespace),
        &cm,
        "ConfigMap",
        &params,
    )
    .await?;
    let svc = build::service(ri);
    apply(
        &Api::<Service>::namespaced(client.clone(), namespace),
        &svc,
        "Service",
        &params,
    )
    .await?;
    let statefulsets = Api::<StatefulSet>::namespaced(client, namespace);
    if state.live_config_hash.is_none() {
        // Read once per process: the hash the running pod was made with decides whether
        // what changed needs a restart (`build::config_hash`).
        let names = Names::of(&ri.name_any());
        let live = statefulsets
            .get_opt(&names.workload)
            .await
            .map_err(|source| Error::ApplyChild {
                kind: "StatefulSet",
                name: names.workload.clone(),
                source,
            })?;
        state.live_config_hash = Some(live.as_ref().and_then(build::live_config_hash));
    }
    let live = state.live_config_hash.clone().flatten();
    let sts = build::stateful_set(ri, managed, live.as_deref());
    let applied = apply(&statefulsets, &sts, "StatefulSet", &params).await?;
    state.live_config_hash = Some(build::live_config_hash(&applied));
    Ok(build::stateful_set_ready(&applied))
}

async fn apply<K>(
    api: &Api<K>,
    obj: &K,
    kind: &'static str,
    params: &PatchParams,
) -> Result<K, Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut value = serde_json::to_value(obj).map_err(|e| Error::ApplyChild {
        kind,
        name: name.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    // Server-side apply needs apiVersion and kind in the body.
    let dt = K::DynamicType::default();
    value["apiVersion"] = json!(K::api_version(&dt));
    value["kind"] = json!(K::kind(&dt));
    api.patch(&name, params, &Patch::Apply(&value))
        .await
        .map_err(|source| Error::ApplyChild { kind, name, source })
}

/// 32 random bytes as hex: a password for a generated Secret.
fn generate_password() -> String {
    let mut bytes = [0u8; 32];
    // getrandom only fails when the OS has no entropy source, where nothing else works.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes[..16].copy_from_slice(&nanos.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn record_probe_metrics(
    ctx: &Context,
    labels: &InstanceLabels,
    outcome: &Result<ProbeSummary, Failure>,
) {
    let m = &ctx.metrics;
    m.note_instance(labels);
    match outcome {
        Ok(p) => {
            m.instance_up.get_or_create(labels).set(1);
            m.observe_latency(labels, p.latency);
            m.set_redis_counters(labels, &p.counters);
        }
        Err(f) => {
            m.instance_up.get_or_create(labels).set(0);
            m.probe_error(labels, &f.reason);
        }
    }
}

fn record_status_metrics(
    ctx: &Context,
    labels: &InstanceLabels,
    status: &crate::api::RedisInstanceStatus,
) {
    let m = &ctx.metrics;
    if let Some(mem) = &status.memory {
        m.used_bytes.get_or_create(labels).set(mem.used_bytes);
        m.capacity_bytes
            .get_or_create(labels)
            .set(mem.capacity_bytes);
        if mem.capacity_bytes > 0 {
            m.usage_ratio
                .get_or_create(labels)
                .set(mem.used_bytes as f64 / mem.capacity_bytes as f64);
        }
    }
    if let Some(keys) = status.keys {
        m.keys.get_or_create(labels).set(keys);
    }
    if let Some(policy) = &status.eviction_policy {
        m.evicts_keys_without_ttl
            .get_or_create(labels)
            .set(i64::from(evicts_keys_without_ttl(policy)));
    }
    if let Some(stats) = &status.stats {
        m.connected_clients
            .get_or_create(labels)
            .set(stats.connected_clients);
    }
}

async fn publish(ctx: &Context, ri: &RedisInstance, transition: &Transition) {
    let event = match transition {
        Transition::Phase {
            from,
            to,
            reason,
            message,
        } => Event {
            type_: if matches!(to, InstancePhase::Unreachable | InstancePhase::Degraded) {
                EventType::Warning
            } else {
                EventType::Normal
            },
            // Events with the same reason are folded into one series (keeping the first
            // note), so a recovery gets a reason of its own.
            reason: if *from == InstancePhase::Unreachable && to.serves_traffic() {
                "Recovered".to_owned()
            } else {
                to.as_str().to_owned()
            },
            note: Some(truncate(
                &format!("{from} → {to} ({reason}): {message}"),
                1000,
            )),
            action: "Probe".to_owned(),
            secondary: None,
        },
        Transition::ThresholdExceeded {
            used_percent,
            threshold,
        } => Event {
            type_: EventType::Warning,
            reason: "CapacityThresholdExceeded".to_owned(),
            note: Some(format!(
                "memory use {used_percent}% is at or above the capacity threshold of {threshold}%"
            )),
            action: "Probe".to_owned(),
            secondary: None,
        },
        Transition::ThresholdCleared {
            used_percent,
            threshold,
        } => Event {
            type_: EventType::Normal,
            reason: "CapacityBelowThreshold".to_owned(),
            note: Some(format!(
                "memory use {used_percent}% is back below the capacity threshold of {threshold}%"
            )),
            action: "Probe".to_owned(),
            secondary: None,
        },
        Transition::EvictionPolicy { policy, safe } => Event {
            type_: if *safe {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: if *safe {
                "EvictionPolicySafe"
            } else {
                "EvictionPolicyUnsafe"
            }
            .to_owned(),
            note: Some(status::eviction_message(policy, *safe)),
            action: "Probe".to_owned(),
            secondary: None,
        },
    };
    info!(reason = %event.reason, note = event.note.as_deref().unwrap_or_default(), "event");
    if let Err(e) = ctx.recorder.publish(&event, &ri.object_ref(&())).await {
        warn!(error = %e, "recording an event failed");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
