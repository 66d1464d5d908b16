//! Prometheus metrics of the operator: per-instance health and memory, and per-controller
//! reconcile counts, durations and errors (labelled by error variant, never by message).

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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of per-instance series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Namespace of the RedisInstance.
    pub namespace: String,
    /// Name of the RedisInstance.
    pub instance: String,
}

/// Labels of probe errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeErrorLabels {
    /// Namespace of the RedisInstance.
    pub namespace: String,
    /// Name of the RedisInstance.
    pub instance: String,
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
    /// `used_memory`.
    pub used_bytes: Family<InstanceLabels, Gauge>,
    /// Effective capacity.
    pub capacity_bytes: Family<InstanceLabels, Gauge>,
    /// used / capacity.
    pub usage_ratio: Family<InstanceLabels, FloatGauge>,
    /// Keyspace hit ratio over the last probe window.
    pub hit_ratio: Family<InstanceLabels, FloatGauge>,
    /// Keys over all databases.
    pub keys: Family<InstanceLabels, Gauge>,
    /// Commands per second over the last probe window.
    pub ops_per_second: Family<InstanceLabels, FloatGauge>,
    /// Connected clients.
    pub connected_clients: Family<InstanceLabels, Gauge>,
    /// Keys evicted since the server started.
    pub evicted_keys: Family<InstanceLabels, Gauge>,
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
}

/// Labels of per-policy series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
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
            used_bytes: Family::default(),
            capacity_bytes: Family::default(),
            usage_ratio: Family::default(),
            hit_ratio: Family::default(),
            keys: Family::default(),
            ops_per_second: Family::default(),
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
            publish_latency: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            rebalance_keys_moved: Family::default(),
            rebalance_keys_total: Family::default(),
            rebalance_failures: Family::default(),
            sidecars: Family::default(),
            sidecar_min_version: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("redisfleet");
        r.register(
            "instance_up",
            "1 when the last probe of the instance succeeded",
            m.instance_up.clone(),
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
            "instance_hit_ratio",
            "Keyspace hit ratio over the last probe window",
            m.hit_ratio.clone(),
        );
        r.register(
            "instance_keys",
            "Keys in all databases of the instance",
            m.keys.clone(),
        );
        r.register(
            "instance_ops_per_second",
            "Commands per second over the last probe window",
            m.ops_per_second.clone(),
        );
        r.register(
            "instance_connected_clients",
            "Clients connected to the instance",
            m.connected_clients.clone(),
        );
        r.register(
            "instance_evicted_keys",
            "Keys evicted since the instance started",
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
        m
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

    /// Forgets every series of a deleted instance.
    pub fn forget_instance(&self, labels: &InstanceLabels) {
        self.instance_up.remove(labels);
        self.used_bytes.remove(labels);
        self.capacity_bytes.remove(labels);
        self.usage_ratio.remove(labels);
        self.hit_ratio.remove(labels);
        self.keys.remove(labels);
        self.ops_per_second.remove(labels);
        self.connected_clients.remove(labels);
        self.evicted_keys.remove(labels);
        self.probe_latency.remove(labels);
    }

    /// Records a probe latency.
    pub fn observe_latency(&self, labels: &InstanceLabels, latency: Duration) {
        self.probe_latency
            .get_or_create(labels)
            .observe(latency.as_secs_f64());
    }
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
