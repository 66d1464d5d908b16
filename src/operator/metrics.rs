//! Prometheus metrics of the operator: per-instance health and memory, per-policy memory by
//! category and rebalance estimates, and per-controller reconcile counts, durations and errors
//! (labelled by error variant, never by message).
//!
//! A RedisInstance is labelled `redis_instance`, never `instance`: Prometheus sets `instance`
//! on every scraped series (the target), and a series' own `instance` would be renamed
//! `exported_instance` or, with `honorLabels`, overwrite it. Redis's own monotonic counters
//! (commands, keyspace hits and misses, evictions) are exported as they are, as `_total`
//! counters, for PromQL's `rate()`; a restart of the server resets them, which `rate()` handles.
//! The series of a deleted RedisInstance or CachePolicy are removed
//! ([`Metrics::forget_instance`], [`Metrics::forget_policy`]), so that no stale value keeps an
//! alert firing.

use std::time::{Duration, Instant};

/// Gives a reconcile error enum `fn variant(&self) -> &'static str`: the variant's name, which
/// labels the reconcile-error metric (never the message). Listing a variant twice or leaving
/// one out does not compile.
///
/// ```ignore
/// error_variants!(Error { MissingNamespace, WriteStatus });
/// ```
macro_rules! error_variants {
    ($error:ident { $($variant:ident),+ $(,)? }) => {
        impl $error {
            /// The variant name, for metrics.
            pub fn variant(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => stringify!($variant),)+
                }
            }
        }
    };
}
pub(crate) use error_variants;

use crate::api::cache_policy::{CachePolicy, CategoryUsage};
use kube::ResourceExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Labels of per-instance series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Namespace of the RedisInstance.
    pub namespace: String,
    /// Name of the RedisInstance (not `instance`, Prometheus's target label).
    pub redis_instance: String,
}

/// Labels of probe errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeErrorLabels {
    /// Namespace of the RedisInstance.
    pub namespace: String,
    /// Name of the RedisInstance.
    pub redis_instance: String,
    /// Failure reason (`ConnectionRefused`, `Timeout`, …).
    pub reason: String,
}

/// Labels of per-controller series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `RedisInstance` or `CachePolicy`.
    pub controller: String,
}

/// Labels of status write decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusWriteLabels {
    /// `RedisInstance` or `CachePolicy`.
    pub controller: String,
    /// `Changed` (written at once), `Refresh` (written, unchanged) or `Skip` (not written).
    pub decision: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `RedisInstance` or `CachePolicy`.
    pub controller: String,
    /// Error variant name.
    pub error: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// All operator metrics.
#[derive(Debug)]
pub struct Metrics {
    /// 1 when the last probe succeeded.
    pub instance_up: Family<InstanceLabels, Gauge>,
    /// 1 when the server's `maxmemory-policy` may evict keys without a TTL (`allkeys-*`).
    pub evicts_keys_without_ttl: Family<InstanceLabels, Gauge>,
    /// `used_memory`.
    pub used_bytes: Family<InstanceLabels, Gauge>,
    /// Effective capacity.
    pub capacity_bytes: Family<InstanceLabels, Gauge>,
    /// used / capacity.
    pub usage_ratio: Family<InstanceLabels, FloatGauge>,
    /// `keyspace_hits` since the server started.
    pub keyspace_hits: Family<InstanceLabels, Counter>,
    /// `keyspace_misses` since the server started.
    pub keyspace_misses: Family<InstanceLabels, Counter>,
    /// Keys over all databases.
    pub keys: Family<InstanceLabels, Gauge>,
    /// `total_commands_processed` since the server started.
    pub commands_processed: Family<InstanceLabels, Counter>,
    /// Connected clients.
    pub connected_clients: Family<InstanceLabels, Gauge>,
    /// `evicted_keys` since the server started.
    pub evicted_keys: Family<InstanceLabels, Counter>,
    /// PING round trips.
    pub probe_latency: Family<InstanceLabels, Histogram>,
    /// Failed probes by reason.
    pub probe_errors: Family<ProbeErrorLabels, Counter>,
    /// Reconciles run.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconcile durations.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// Reconcile errors by variant.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Status write decisions (written or skipped) by controller.
    pub status_writes: Family<StatusWriteLabels, Counter>,
    /// Routing table version published per policy.
    pub routing_version: Family<PolicyLabels, Gauge>,
    /// Failed-over slot ranges per policy.
    pub failovers: Family<PolicyLabels, Gauge>,
    /// Instances whose failover the last reconcile held back (one of them answers again).
    pub failovers_held_back: Family<PolicyLabels, Gauge>,
    /// Failover notices withdrawn: every instance they named answered again within the wait.
    pub failover_notices_withdrawn: Family<PolicyLabels, Counter>,
    /// Seconds from an instance status change to the routing ConfigMap update.
    pub publish_latency: Histogram,
    /// Keys moved by the rebalance in progress (or last finished), per policy.
    pub rebalance_keys_moved: Family<PolicyLabels, Gauge>,
    /// Keys that rebalance has to move, per policy.
    pub rebalance_keys_total: Family<PolicyLabels, Gauge>,
    /// Rebalance Jobs that failed, per policy.
    pub rebalance_failures: Family<PolicyLabels, Counter>,
    /// Sidecars with a live heartbeat, per policy.
    pub sidecars: Family<PolicyLabels, Gauge>,
    /// Lowest routing version among those sidecars, per policy.
    pub sidecar_min_version: Family<PolicyLabels, Gauge>,
    /// Sampled memory per category and instance, per policy.
    pub category_bytes: Family<CategoryLabels, Gauge>,
    /// Sampled keys per category and instance, per policy.
    pub category_keys: Family<CategoryLabels, Gauge>,
    /// Sampled bytes an instance holds as the replica of a category's slots served elsewhere.
    pub category_replica_bytes: Family<CategoryLabels, Gauge>,
    /// Slots of each replicated category by replica state, per policy.
    pub replica_slots: Family<ReplicaLabels, Gauge>,
    /// The fleet's mean used share (the centre of the balance band), per policy.
    pub mean_usage_ratio: Family<PolicyLabels, FloatGauge>,
    /// Bytes the rebalance in progress or last finished moves, as planned.
    pub rebalance_estimated_bytes: Family<PolicyLabels, Gauge>,
    /// The least bytes that reach the balance band, as the planner estimated them.
    pub rebalance_least_bytes: Family<PolicyLabels, Gauge>,
    /// Bytes the last finished rebalance moved, as measured.
    pub rebalance_measured_bytes: Family<PolicyLabels, Gauge>,
    /// Instances that left the policy and are not fenced and cleaned yet, per policy.
    pub departing_instances: Family<PolicyLabels, Gauge>,
    /// Instances that left the policy and were given up on unfenced, per policy.
    pub departures_given_up: Family<PolicyLabels, Counter>,
    /// Instances found answering without the replicated data they held (restarted empty or
    /// flushed), per policy.
    pub instances_lost_data: Family<PolicyLabels, Counter>,
    /// Keys the periodic replica check compared, per policy.
    pub replica_checked_keys: Family<PolicyLabels, Counter>,
    /// Keys the periodic replica check found behind their writer (and repaired), per policy.
    pub replica_divergent_keys: Family<PolicyLabels, Counter>,
    /// The category series last set per policy, to remove those that went away.
    category_series: Mutex<BTreeMap<PolicyLabels, BTreeSet<CategoryLabels>>>,
    /// The replica series set for each policy, so that a category no longer replicated loses
    /// its series.
    replica_series: Mutex<BTreeMap<PolicyLabels, BTreeSet<ReplicaLabels>>>,
    /// The instances and policies that have series, and the probe error reasons seen: what
    /// the janitor compares with what exists, and what forgetting must remove.
    known: Mutex<Known>,
}

/// Label sets made so far that [`Family`] cannot list.
#[derive(Debug, Default)]
struct Known {
    probe_error_reasons: HashMap<InstanceLabels, BTreeSet<String>>,
    instances: HashSet<InstanceLabels>,
    policies: HashSet<PolicyLabels>,
}

/// Labels of per-category series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CategoryLabels {
    /// Namespace of the CachePolicy.
    pub namespace: String,
    /// Name of the CachePolicy.
    pub policy: String,
    /// Category name.
    pub category: String,
    /// RedisInstance name (not `instance`, Prometheus's target label).
    pub redis_instance: String,
}

/// Labels of a replicated category's slot counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// Namespace of the CachePolicy.
    pub namespace: String,
    /// Name of the CachePolicy.
    pub policy: String,
    /// Category name.
    pub category: String,
    /// `replicated`, `seeding` or `unreplicated`.
    pub state: String,
}

/// Labels of per-policy series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Namespace of the CachePolicy.
    pub namespace: String,
    /// Name of the CachePolicy.
    pub policy: String,
}

impl Metrics {
    /// Creates the metrics and registers them under the `redisfleet` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let latency = || Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let m = Self {
            instance_up: Family::default(),
            evicts_keys_without_ttl: Family::default(),
            used_bytes: Family::default(),
            capacity_bytes: Family::default(),
            usage_ratio: Family::default(),
            keyspace_hits: Family::default(),
            keyspace_misses: Family::default(),
            keys: Family::default(),
            commands_processed: Family::default(),
            connected_clients: Family::default(),
            evicted_keys: Family::default(),
            probe_latency: Family::new_with_constructor(latency),
            probe_errors: Family::default(),
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            reconcile_errors: Family::default(),
            status_writes: Family::default(),
            routing_version: Family::default(),
            failovers: Family::default(),
            failovers_held_back: Family::default(),
            failover_notices_withdrawn: Family::default(),
            publish_latency: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            rebalance_keys_moved: Family::default(),
            rebalance_keys_total: Family::default(),
            rebalance_failures: Family::default(),
            sidecars: Family::default(),
            sidecar_min_version: Family::default(),
            category_bytes: Family::default(),
            category_keys: Family::default(),
            category_replica_bytes: Family::default(),
            replica_slots: Family::default(),
            mean_usage_ratio: Family::default(),
            rebalance_estimated_bytes: Family::default(),
            rebalance_least_bytes: Family::default(),
            rebalance_measured_bytes: Family::default(),
            departing_instances: Family::default(),
            departures_given_up: Family::default(),
            instances_lost_data: Family::default(),
            replica_checked_keys: Family::default(),
            replica_divergent_keys: Family::default(),
            category_series: Mutex::default(),
            replica_series: Mutex::default(),
            known: Mutex::new(Known::default()),
        };
        let r = registry.sub_registry_with_prefix("redisfleet");
        r.register(
            "instance_up",
            "1 when the last probe of the instance succeeded",
            m.instance_up.clone(),
        );
        r.register(
            "instance_evicts_keys_without_ttl",
            "1 when the instance's maxmemory-policy may evict keys without a TTL (allkeys-*): no rebalance moves data out of it",
            m.evicts_keys_without_ttl.clone(),
        );
        r.register(
            "instance_used_bytes",
            "Memory used by the instance (INFO used_memory)",
            m.used_bytes.clone(),
        );
        r.register(
            "instance_capacity_bytes",
            "Effective capacity of the instance",
            m.capacity_bytes.clone(),
        );
        r.register(
            "instance_usage_ratio",
            "Used memory divided by capacity",
            m.usage_ratio.clone(),
        );
        r.register(
            "instance_keyspace_hits",
            "Key lookups that found their key since the instance started (INFO keyspace_hits)",
            m.keyspace_hits.clone(),
        );
        r.register(
            "instance_keyspace_misses",
            "Key lookups that did not find their key since the instance started (INFO keyspace_misses)",
            m.keyspace_misses.clone(),
        );
        r.register(
            "instance_keys",
            "Keys in all databases of the instance",
            m.keys.clone(),
        );
        r.register(
            "instance_commands_processed",
            "Commands processed since the instance started (INFO total_commands_processed)",
            m.commands_processed.clone(),
        );
        r.register(
            "instance_connected_clients",
            "Clients connected to the instance",
            m.connected_clients.clone(),
        );
        r.register(
            "instance_evicted_keys",
            "Keys evicted since the instance started (INFO evicted_keys)",
            m.evicted_keys.clone(),
        );
        r.register(
            "instance_probe_latency_seconds",
            "PING round trip of health probes",
            m.probe_latency.clone(),
        );
        r.register(
            "instance_probe_errors",
            "Failed health probes by reason",
            m.probe_errors.clone(),
        );
        r.register("reconcile", "Reconciles run", m.reconciles.clone());
        r.register(
            "reconcile_duration_seconds",
            "Reconcile durations",
            m.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile errors by error variant",
            m.reconcile_errors.clone(),
        );
        r.register(
            "status_writes",
            "Status write decisions: Changed and Refresh are written, Skip is not",
            m.status_writes.clone(),
        );
        r.register(
            "routing_version",
            "Version of the routing table published for the policy",
            m.routing_version.clone(),
        );
        r.register(
            "failover_ranges",
            "Slot ranges currently served by a fallback instance",
            m.failovers.clone(),
        );
        r.register(
            "failovers_held_back",
            "Instances whose failover the last reconcile built but held back because one of them answers again (not Ready yet)",
            m.failovers_held_back.clone(),
        );
        r.register(
            "failover_notices_withdrawn",
            "Failover notices withdrawn because every instance they named answered again within the notice's wait: the routing in force went out again, no failover",
            m.failover_notices_withdrawn.clone(),
        );
        r.register(
            "routing_publish_latency_seconds",
            "Time from an instance status change to the routing ConfigMap update",
            m.publish_latency.clone(),
        );
        r.register(
            "rebalance_keys_moved",
            "Keys moved by the rebalance in progress or last finished",
            m.rebalance_keys_moved.clone(),
        );
        r.register(
            "rebalance_keys",
            "Keys the rebalance in progress or last finished has to move",
            m.rebalance_keys_total.clone(),
        );
        r.register(
            "rebalance_failures",
            "Rebalance Jobs that failed",
            m.rebalance_failures.clone(),
        );
        r.register(
            "sidecars",
            "Sidecars with a live heartbeat on the policy's instances",
            m.sidecars.clone(),
        );
        r.register(
            "sidecar_min_version",
            "Lowest routing table version among the live sidecars",
            m.sidecar_min_version.clone(),
        );
        r.register(
            "category_used_bytes",
            "Memory of a category on an instance, estimated from samples",
            m.category_bytes.clone(),
        );
        r.register(
            "category_keys",
            "Keys of a category on an instance, estimated from samples",
            m.category_keys.clone(),
        );
        r.register(
            "category_replica_bytes",
            "Memory an instance holds as the replica of a category's slots that another instance serves, estimated from samples (not in category_used_bytes)",
            m.category_replica_bytes.clone(),
        );
        r.register(
            "replica_slots",
            "Slots of a replicated category whose replica is seeded (state=replicated), being seeded (seeding) or missing (unreplicated); handover: those of replicated whose replica moves (the old one kept until the new one is seeded)",
            m.replica_slots.clone(),
        );
        r.register(
            "policy_mean_usage_ratio",
            "The fleet's mean used share: the policy's bytes over the capacity of the instances that may hold them",
            m.mean_usage_ratio.clone(),
        );
        r.register(
            "rebalance_estimated_bytes",
            "Bytes the rebalance in progress or last finished moves, as the planner estimated them",
            m.rebalance_estimated_bytes.clone(),
        );
        r.register(
            "rebalance_least_bytes",
            "The least bytes that bring every instance within the balance band, as the planner estimated them",
            m.rebalance_least_bytes.clone(),
        );
        r.register(
            "rebalance_measured_bytes",
            "Bytes the last finished rebalance moved, as measured from the instances' memory",
            m.rebalance_measured_bytes.clone(),
        );
        r.register(
            "departing_instances",
            "Instances that left the policy and are not fenced on themselves and cleaned yet (they did not answer since)",
            m.departing_instances.clone(),
        );
        r.register(
            "departures_given_up",
            "Instances that left the policy and did not answer for an hour after: never fenced, their keys of the policy stay",
            m.departures_given_up.clone(),
        );
        r.register(
            "instances_lost_data",
            "Instances found answering without the replicated data they held (restarted empty or flushed): their replicated ranges failed over to their replicas",
            m.instances_lost_data.clone(),
        );
        r.register(
            "replica_checked_keys",
            "Keys the periodic replica check compared between writers and their replicas (a key on both counts twice)",
            m.replica_checked_keys.clone(),
        );
        r.register(
            "replica_divergent_keys",
            "Keys the periodic replica check found behind their writer on a replica (a dropped async result, a refused apply); each is repaired unless the replica refuses it again",
            m.replica_divergent_keys.clone(),
        );
        m
    }

    /// Sets the policy's memory, keys and replica copies per (category, instance), as
    /// `status.usage` lists them, removing the series of pairs no longer sampled.
    pub fn set_category_usage(&self, policy: &PolicyLabels, usage: &[CategoryUsage]) {
        let mut now = BTreeSet::new();
        for u in usage {
            let labels = CategoryLabels {
                namespace: policy.namespace.clone(),
                policy: policy.policy.clone(),
                category: u.category.clone(),
                redis_instance: u.instance.clone(),
            };
            // A pair that holds only replica copies has no served series (no zero bar).
            let served = (u.bytes > 0 || u.replica_bytes.is_none()).then_some(u.bytes);
            for (family, value) in [
                (&self.category_bytes, served),
                (&self.category_keys, u.keys.filter(|_| served.is_some())),
                (&self.category_replica_bytes, u.replica_bytes),
            ] {
                match value {
                    Some(v) => {
                        family.get_or_create(&labels).set(v);
                    }
                    None => {
                        family.remove(&labels);
                    }
                }
            }
            now.insert(labels);
        }
        let mut series = self
            .category_series
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(before) = series.insert(policy.clone(), now.clone()) {
            for gone in before.difference(&now) {
                self.forget_category_series(gone);
            }
        }
    }

    fn forget_category_series(&self, labels: &CategoryLabels) {
        self.category_bytes.remove(labels);
        self.category_keys.remove(labels);
        self.category_replica_bytes.remove(labels);
    }

    /// Sets the slot counts of each replicated category of a policy (category, replicated,
    /// seeding, unreplicated, handover); the series of categories not given are removed.
    pub fn set_replica_slots(
        &self,
        policy: &PolicyLabels,
        counts: impl IntoIterator<Item = (String, [i64; 4])>,
    ) {
        let mut now = BTreeSet::new();
        for (category, values) in counts {
            for (state, value) in ["replicated", "seeding", "unreplicated", "handover"]
                .into_iter()
                .zip(values)
            {
                let labels = ReplicaLabels {
                    namespace: policy.namespace.clone(),
                    policy: policy.policy.clone(),
                    category: category.clone(),
                    state: state.to_owned(),
                };
                self.replica_slots.get_or_create(&labels).set(value);
                now.insert(labels);
            }
        }
        let mut series = self
            .replica_series
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(before) = series.insert(policy.clone(), now.clone()) {
            for gone in before.difference(&now) {
                self.replica_slots.remove(gone);
            }
        }
    }

    /// Counts a reconcile and records its duration when the returned guard drops.
    pub fn reconcile_timer(&self, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.to_owned(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.reconcile_duration.get_or_create_owned(&labels),
            started: Instant::now(),
        }
    }

    /// Counts a reconcile error.
    pub fn reconcile_error(&self, controller: &str, variant: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_owned(),
                error: variant.to_owned(),
            })
            .inc();
    }

    /// Counts a status write decision (`Changed`, `Refresh`, `Skip`).
    pub fn status_write(&self, controller: &str, decision: &str) {
        self.status_writes
            .get_or_create(&StatusWriteLabels {
                controller: controller.to_owned(),
                decision: decision.to_owned(),
            })
            .inc();
    }

    /// Counts a failed probe of an instance, by reason.
    pub fn probe_error(&self, labels: &InstanceLabels, reason: &str) {
        self.probe_errors
            .get_or_create(&ProbeErrorLabels {
                namespace: labels.namespace.clone(),
                redis_instance: labels.redis_instance.clone(),
                reason: reason.to_owned(),
            })
            .inc();
        self.known()
            .probe_error_reasons
            .entry(labels.clone())
            .or_default()
            .insert(reason.to_owned());
    }

    /// Sets the instance's mirrors of Redis's own counters to the values INFO reported. They
    /// only go down when the server restarted (or `CONFIG RESETSTAT`), which Prometheus reads
    /// as a counter reset.
    pub fn set_redis_counters(&self, labels: &InstanceLabels, counters: &RedisCounters) {
        for (family, value) in [
            (&self.commands_processed, counters.commands_processed),
            (&self.keyspace_hits, counters.keyspace_hits),
            (&self.keyspace_misses, counters.keyspace_misses),
            (&self.evicted_keys, counters.evicted_keys),
        ] {
            if let Some(v) = value {
                family
                    .get_or_create(labels)
                    .inner()
                    .store(v, Ordering::Relaxed);
            }
        }
    }

    /// Notes that the instance has series, so that the janitor finds them once it is deleted
    /// (even when a probe that was under way re-made them after an earlier forgetting).
    /// Whoever makes a per-instance series calls this.
    pub fn note_instance(&self, labels: &InstanceLabels) {
        let mut known = self.known();
        if !known.instances.contains(labels) {
            known.instances.insert(labels.clone());
        }
    }

    /// The instances that have series, for the janitor to compare with the ones that exist.
    pub fn instances(&self) -> Vec<InstanceLabels> {
        self.known().instances.iter().cloned().collect()
    }

    /// Forgets every series of a deleted instance.
    pub fn forget_instance(&self, labels: &InstanceLabels) {
        self.known().instances.remove(labels);
        self.instance_up.remove(labels);
        self.evicts_keys_without_ttl.remove(labels);
        self.used_bytes.remove(labels);
        self.capacity_bytes.remove(labels);
        self.usage_ratio.remove(labels);
        self.keyspace_hits.remove(labels);
        self.keyspace_misses.remove(labels);
        self.keys.remove(labels);
        self.commands_processed.remove(labels);
        self.connected_clients.remove(labels);
        self.evicted_keys.remove(labels);
        self.probe_latency.remove(labels);
        let reasons = self.known().probe_error_reasons.remove(labels);
        for reason in reasons.into_iter().flatten() {
            self.probe_errors.remove(&ProbeErrorLabels {
                namespace: labels.namespace.clone(),
                redis_instance: labels.redis_instance.clone(),
                reason,
            });
        }
    }

    /// Notes that the policy has series, so that the janitor finds them once it is deleted.
    /// Whoever makes a per-policy series calls this.
    pub fn note_policy(&self, labels: &PolicyLabels) {
        let mut known = self.known();
        if !known.policies.contains(labels) {
            known.policies.insert(labels.clone());
        }
    }

    /// Counts an instance that left the policy and was given up on, unfenced.
    pub fn departure_given_up(&self, labels: &PolicyLabels) {
        self.note_policy(labels);
        self.departures_given_up.get_or_create(labels).inc();
    }

    /// Counts a failover notice withdrawn: its instances answered again within the wait.
    pub fn failover_notice_withdrawn(&self, labels: &PolicyLabels) {
        self.note_policy(labels);
        self.failover_notices_withdrawn.get_or_create(labels).inc();
    }

    /// Counts an instance found without the replicated data it held.
    pub fn instance_lost_data(&self, labels: &PolicyLabels) {
        self.note_policy(labels);
        self.instances_lost_data.get_or_create(labels).inc();
    }

    /// Counts what a replica check of the policy compared and found diverging.
    pub fn replica_checked(&self, labels: &PolicyLabels, keys: u64, divergent: u64) {
        self.note_policy(labels);
        self.replica_checked_keys.get_or_create(labels).inc_by(keys);
        self.replica_divergent_keys
            .get_or_create(labels)
            .inc_by(divergent);
    }

    /// Counts a failed rebalance Job of the policy.
    pub fn rebalance_failed(&self, labels: &PolicyLabels) {
        self.note_policy(labels);
        self.rebalance_failures.get_or_create(labels).inc();
    }

    /// The policies that have series, for the janitor to compare with the ones that exist.
    pub fn policies(&self) -> Vec<PolicyLabels> {
        self.known().policies.iter().cloned().collect()
    }

    /// A policy as its watch sees it (not one being deleted): noted, with the copy's figures
    /// its status reports, keys moved and keys in all (none: no plan so far). They are set
    /// here, from every change, as the Job reports them: their changes do not wake a
    /// reconcile, and a reconcile's status may be older than the last report.
    pub fn policy_watched(&self, policy: &CachePolicy) {
        if policy.metadata.deletion_timestamp.is_some() {
            return;
        }
        let labels = PolicyLabels {
            namespace: policy.namespace().unwrap_or_default(),
            policy: policy.name_any(),
        };
        self.note_policy(&labels);
        if let Some(r) = policy.status.as_ref().and_then(|s| s.rebalance.as_ref()) {
            self.rebalance_keys_moved
                .get_or_create(&labels)
                .set(r.keys_moved.unwrap_or(0));
            self.rebalance_keys_total
                .get_or_create(&labels)
                .set(r.keys_total.unwrap_or(0));
        }
    }

    /// Forgets every series of a deleted policy.
    pub fn forget_policy(&self, labels: &PolicyLabels) {
        self.known().policies.remove(labels);
        self.routing_version.remove(labels);
        self.failovers.remove(labels);
        self.failovers_held_back.remove(labels);
        self.failover_notices_withdrawn.remove(labels);
        self.rebalance_keys_moved.remove(labels);
        self.rebalance_keys_total.remove(labels);
        self.rebalance_failures.remove(labels);
        self.sidecars.remove(labels);
        self.sidecar_min_version.remove(labels);
        self.mean_usage_ratio.remove(labels);
        self.rebalance_estimated_bytes.remove(labels);
        self.rebalance_least_bytes.remove(labels);
        self.rebalance_measured_bytes.remove(labels);
        self.departing_instances.remove(labels);
        self.departures_given_up.remove(labels);
        self.instances_lost_data.remove(labels);
        self.replica_checked_keys.remove(labels);
        self.replica_divergent_keys.remove(labels);
        let series = self
            .category_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(labels);
        for gone in series.into_iter().flatten() {
            self.forget_category_series(&gone);
        }
        self.set_replica_slots(labels, []);
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // The sets stay consistent under a panic elsewhere: each update is one insert/remove.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a probe latency.
    pub fn observe_latency(&self, labels: &InstanceLabels, latency: Duration) {
        self.probe_latency
            .get_or_create(labels)
            .observe(latency.as_secs_f64());
    }
}

/// Redis's own counters from one INFO reply (`None` when the reply lacked the field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisCounters {
    /// `total_commands_processed`.
    pub commands_processed: Option<u64>,
    /// `keyspace_hits`.
    pub keyspace_hits: Option<u64>,
    /// `keyspace_misses`.
    pub keyspace_misses: Option<u64>,
    /// `evicted_keys`.
    pub evicted_keys: Option<u64>,
}

/// Records a reconcile's duration on drop.
#[derive(Debug)]
pub struct ReconcileTimer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    fn instance(name: &str) -> InstanceLabels {
        InstanceLabels {
            namespace: "shop".into(),
            redis_instance: name.into(),
        }
    }

    #[test]
    fn redis_counters_are_counters_with_the_values_info_reported() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let a = instance("a");
        let counters = RedisCounters {
            commands_processed: Some(1_000),
            keyspace_hits: Some(90),
            keyspace_misses: Some(10),
            evicted_keys: Some(3),
        };
        m.set_redis_counters(&a, &counters);
        let out = text(&registry);
        for line in [
            "# TYPE redisfleet_instance_commands_processed counter",
            "redisfleet_instance_commands_processed_total{namespace=\"shop\",redis_instance=\"a\"} 1000",
            "redisfleet_instance_keyspace_hits_total{namespace=\"shop\",redis_instance=\"a\"} 90",
            "redisfleet_instance_keyspace_misses_total{namespace=\"shop\",redis_instance=\"a\"} 10",
            "# TYPE redisfleet_instance_evicted_keys counter",
            "redisfleet_instance_evicted_keys_total{namespace=\"shop\",redis_instance=\"a\"} 3",
        ] {
            assert!(out.contains(line), "missing {line}\n{out}");
        }

        // A restarted server starts from zero: the counter resets, as rate() expects; a field
        // missing from the reply leaves the last value.
        m.set_redis_counters(
            &a,
            &RedisCounters {
                keyspace_hits: Some(2),
                ..RedisCounters::default()
            },
        );
        let out = text(&registry);
        assert!(
            out.contains(
                "redisfleet_instance_keyspace_hits_total{namespace=\"shop\",redis_instance=\"a\"} 2"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "redisfleet_instance_evicted_keys_total{namespace=\"shop\",redis_instance=\"a\"} 3"
            ),
            "{out}"
        );
    }

    #[test]
    fn forgetting_an_instance_removes_its_series_and_only_its() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let (a, b) = (instance("a"), instance("b"));
        for labels in [&a, &b] {
            m.note_instance(labels);
            m.instance_up.get_or_create(labels).set(1);
            m.usage_ratio.get_or_create(labels).set(0.5);
            m.set_redis_counters(
                labels,
                &RedisCounters {
                    commands_processed: Some(5),
                    ..RedisCounters::default()
                },
            );
            m.observe_latency(labels, Duration::from_millis(1));
            m.probe_error(labels, "Timeout");
            m.probe_error(labels, "ConnectionRefused");
        }
        let mut known = m.instances();
        known.sort_by(|x, y| x.redis_instance.cmp(&y.redis_instance));
        assert_eq!(known, vec![a.clone(), b.clone()]);
        m.forget_instance(&a);
        assert_eq!(m.instances(), vec![b.clone()]);
        let out = text(&registry);
        assert!(!out.contains("redis_instance=\"a\""), "{out}");
        for series in [
            "redisfleet_instance_up{namespace=\"shop\",redis_instance=\"b\"} 1",
            "redisfleet_instance_probe_errors_total{namespace=\"shop\",redis_instance=\"b\",reason=\"Timeout\"} 1",
            "redisfleet_instance_probe_errors_total{namespace=\"shop\",redis_instance=\"b\",reason=\"ConnectionRefused\"} 1",
        ] {
            assert!(out.contains(series), "missing {series}\n{out}");
        }
    }

    #[test]
    fn forgetting_a_policy_removes_its_series_and_only_its() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let policy = |name: &str| PolicyLabels {
            namespace: "shop".into(),
            policy: name.into(),
        };
        let (gone, kept) = (policy("gone"), policy("kept"));
        for labels in [&gone, &kept] {
            m.note_policy(labels);
            for family in [
                &m.routing_version,
                &m.failovers,
                &m.failovers_held_back,
                &m.rebalance_keys_moved,
                &m.rebalance_keys_total,
                &m.sidecars,
                &m.sidecar_min_version,
                &m.rebalance_estimated_bytes,
                &m.rebalance_least_bytes,
                &m.rebalance_measured_bytes,
                &m.departing_instances,
            ] {
                family.get_or_create(labels).set(3);
            }
            m.mean_usage_ratio.get_or_create(labels).set(0.5);
            m.set_category_usage(labels, &[usage("auth", "a", 3, Some(1), Some(2))]);
            m.rebalance_failed(labels);
            m.departure_given_up(labels);
            m.failover_notice_withdrawn(labels);
        }
        let mut known = m.policies();
        known.sort_by(|x, y| x.policy.cmp(&y.policy));
        assert_eq!(known, vec![gone.clone(), kept.clone()]);

        m.forget_policy(&gone);
        let out = text(&registry);
        assert!(!out.contains("policy=\"gone\""), "{out}");
        assert!(
            out.contains("redisfleet_sidecar_min_version{namespace=\"shop\",policy=\"kept\"} 3"),
            "{out}"
        );
        assert!(
            out.contains(
                "redisfleet_rebalance_failures_total{namespace=\"shop\",policy=\"kept\"} 1"
            ),
            "{out}"
        );
        assert_eq!(m.policies(), vec![kept]);
    }

    fn usage(
        category: &str,
        instance: &str,
        bytes: i64,
        keys: Option<i64>,
        replica_bytes: Option<i64>,
    ) -> CategoryUsage {
        CategoryUsage {
            instance: instance.into(),
            category: category.into(),
            bytes,
            keys,
            replica_bytes,
        }
    }

    #[test]
    fn category_series_follow_the_samples() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let shop = PolicyLabels {
            namespace: "shop".into(),
            policy: "shop".into(),
        };
        m.set_category_usage(
            &shop,
            &[
                usage("auth", "primary", 13_000_000, Some(21_000), None),
                usage("auth", "secondary", 0, Some(0), Some(12_500_000)),
                usage("user", "secondary", 2_000_000, None, None),
            ],
        );
        let t = text(&registry);
        assert!(
            t.contains(
                r#"redisfleet_category_used_bytes{namespace="shop",policy="shop",category="auth",redis_instance="primary"} 13000000"#
            ),
            "{t}"
        );
        assert!(t.contains(
            r#"redisfleet_category_keys{namespace="shop",policy="shop",category="auth",redis_instance="primary"} 21000"#
        ));
        assert!(t.contains(
            r#"redisfleet_category_replica_bytes{namespace="shop",policy="shop",category="auth",redis_instance="secondary"} 12500000"#
        ));
        assert!(
            !t.contains(r#"redisfleet_category_replica_bytes{namespace="shop",policy="shop",category="auth",redis_instance="primary"}"#),
            "{t}"
        );
        assert!(
            !t.contains(r#"redisfleet_category_used_bytes{namespace="shop",policy="shop",category="auth",redis_instance="secondary"}"#),
            "only copies: no served series: {t}"
        );
        // auth left both instances: its series go.
        m.set_category_usage(
            &shop,
            &[usage("user", "secondary", 2_500_000, Some(4_000), None)],
        );
        let t = text(&registry);
        assert!(!t.contains(r#"category="auth""#), "{t}");
        assert!(t.contains(
            r#"redisfleet_category_used_bytes{namespace="shop",policy="shop",category="user",redis_instance="secondary"} 2500000"#
        ));
    }
}
