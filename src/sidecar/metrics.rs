//! Prometheus metrics of the sidecar: per category (commands, hits, misses, errors), per
//! instance (latency, connections, requests in flight), and the routing version loaded.
//!
//! The hot path never looks a series up by labels: each routing table version resolves its
//! categories' counters once, and each backend gets its own handles.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::latency_window::LatencyWindow;

/// Labels of per-category series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    /// Category name.
    pub category: String,
}

/// Labels of per-instance series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Name of the RedisInstance (not `instance`: Prometheus sets that to the scraped target,
    /// the sidecar's pod, and the two would clash).
    pub redis_instance: String,
}

/// All sidecar metrics.
#[derive(Debug)]
pub struct SidecarMetrics {
    commands: Family<CategoryLabels, Counter>,
    hits: Family<CategoryLabels, Counter>,
    misses: Family<CategoryLabels, Counter>,
    errors: Family<CategoryLabels, Counter>,
    latency: Family<InstanceLabels, Histogram>,
    connections: Family<InstanceLabels, Gauge>,
    in_flight: Family<InstanceLabels, Gauge>,
    writes: Family<InstanceLabels, Counter>,
    replicated: Family<CategoryLabels, Counter>,
    replica_failures: Family<CategoryLabels, Counter>,
    redelivered: Family<CategoryLabels, Counter>,
    replication_lag: Family<CategoryLabels, Histogram>,
    /// Results of `async` writes on their way to a replica.
    pub replication_backlog: Gauge,
    /// Their bytes (keys and `DUMP` payloads).
    pub replication_backlog_bytes: Gauge,
    /// How long the oldest of them has been on its way.
    pub replication_backlog_age: Arc<BacklogAge>,
    /// Bytes of `sync` results a replica missed, held to be delivered again.
    pub redelivery_bytes: Gauge,
    /// Client connections open.
    pub clients: Gauge,
    /// Routing table version in use.
    pub routing_version: Gauge,
    /// Tables loaded.
    pub reloads: Counter,
    /// Tables that could not be loaded.
    pub reload_errors: Counter,
    /// Reads of a migrating range that the target, asked first, served.
    pub reads_on_target: Counter,
    /// Reads of a migrating range that asked the target first in vain.
    pub reads_not_on_target: Counter,
    /// Reads of keys of a migrating range known moved, sent to the target alone.
    pub reads_known_moved: Counter,
    /// Reads of a drain into a range its target served already that asked the target whether
    /// it held a newer copy of their keys.
    pub reads_checked_on_target: Counter,
    /// Blind writes (`SET`, `SETEX`, `MSET`) of a drain into a range its target served already
    /// whose keys the source's roster lacks: sent straight to the target.
    pub blind_writes_to_target: Counter,
    /// Scripts (and transactions holding one) of a migrating range that waited for the Job to
    /// move their slot groups whole.
    pub scripts_waited_for_groups: Counter,
}

/// The counters of one category.
#[derive(Debug, Clone)]
pub struct CategoryMetrics {
    /// Commands routed to the category.
    pub commands: Counter,
    /// Reads that found their key.
    pub hits: Counter,
    /// Reads that did not.
    pub misses: Counter,
    /// Error replies.
    pub errors: Counter,
    /// Writes whose result reached the replica.
    pub replicated: Counter,
    /// Writes whose result did not reach the replica (refused, lost, or dropped from a full
    /// backlog): the replica misses them until it is repaired.
    pub replica_failures: Counter,
    /// Of those, results the replica took later, delivered again.
    pub redelivered: Counter,
    /// Time from the writer's reply to the replica's.
    pub replication_lag: Histogram,
}

/// The handles of one instance.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    /// Request → reply time.
    pub latency: Histogram,
    /// Open connections.
    pub connections: Gauge,
    /// Requests in flight.
    pub in_flight: Gauge,
    /// Writes to the instance (requests / writes = how many requests one write carries).
    pub writes: Counter,
    /// Request → reply times since the heartbeat last reported them to the instance.
    pub window: Arc<LatencyWindow>,
}

/// Unregistered handles, for backends used outside the sidecar (the rebalance Job).
impl Default for BackendMetrics {
    fn default() -> Self {
        Self {
            latency: latency_histogram(),
            connections: Gauge::default(),
            in_flight: Gauge::default(),
            writes: Counter::default(),
            window: Arc::default(),
        }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

impl SidecarMetrics {
    /// Creates the metrics, registered under `redisfleet_sidecar`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            commands: Family::default(),
            hits: Family::default(),
            misses: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            connections: Family::default(),
            in_flight: Family::default(),
            writes: Family::default(),
            replicated: Family::default(),
            replica_failures: Family::default(),
            redelivered: Family::default(),
            replication_lag: Family::new_with_constructor(latency_histogram),
            replication_backlog: Gauge::default(),
            replication_backlog_bytes: Gauge::default(),
            redelivery_bytes: Gauge::default(),
            replication_backlog_age: Arc::default(),
            clients: Gauge::default(),
            routing_version: Gauge::default(),
            reloads: Counter::default(),
            reload_errors: Counter::default(),
            reads_on_target: Counter::default(),
            reads_known_moved: Counter::default(),
            reads_checked_on_target: Counter::default(),
            blind_writes_to_target: Counter::default(),
            reads_not_on_target: Counter::default(),
            scripts_waited_for_groups: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("redisfleet_sidecar");
        r.register(
            "commands",
            "Commands routed, by category",
            m.commands.clone(),
        );
        r.register(
            "hits",
            "Reads that found their key, by category",
            m.hits.clone(),
        );
        r.register(
            "misses",
            "Reads that did not find their key, by category",
            m.misses.clone(),
        );
        r.register("errors", "Error replies, by category", m.errors.clone());
        r.register(
            "backend_latency_seconds",
            "Time from sending a request to an instance to its reply",
            m.latency.clone(),
        );
        r.register(
            "backend_connections",
            "Open connections to each instance",
            m.connections.clone(),
        );
        r.register(
            "backend_in_flight",
            "Requests waiting for a reply, by instance",
            m.in_flight.clone(),
        );
        r.register(
            "backend_writes",
            "Writes to each instance; requests per write shows how well requests are pipelined",
            m.writes.clone(),
        );
        r.register(
            "replicated_writes",
            "Writes whose result reached the replica, by category",
            m.replicated.clone(),
        );
        r.register(
            "replica_failures",
            "Writes whose result did not reach the replica, by category",
            m.replica_failures.clone(),
        );
        r.register(
            "replica_redeliveries",
            "Results a replica missed at first and took when delivered again, by category",
            m.redelivered.clone(),
        );
        r.register(
            "replica_redelivery_bytes",
            "Bytes of sync results a replica missed, held to be delivered again",
            m.redelivery_bytes.clone(),
        );
        r.register(
            "replication_lag_seconds",
            "Time from a replicated write's reply on its writer to the replica's, by category",
            m.replication_lag.clone(),
        );
        r.register(
            "replication_backlog",
            "Results of async writes on their way to a replica",
            m.replication_backlog.clone(),
        );
        r.register(
            "replication_backlog_bytes",
            "Bytes of the results of async writes on their way to a replica",
            m.replication_backlog_bytes.clone(),
        );
        r.register_collector(Box::new(m.replication_backlog_age.clone()));
        r.register(
            "client_connections",
            "Client connections open",
            m.clients.clone(),
        );
        r.register(
            "routing_version",
            "Version of the routing table in use",
            m.routing_version.clone(),
        );
        r.register(
            "routing_reloads",
            "Routing tables loaded",
            m.reloads.clone(),
        );
        r.register(
            "routing_reload_errors",
            "Routing tables that could not be loaded",
            m.reload_errors.clone(),
        );
        r.register(
            "reads_on_target",
            "Reads of a migrating range that its target, asked first, served in one round trip",
            m.reads_on_target.clone(),
        );
        r.register(
            "reads_not_on_target",
            "Reads of a migrating range that asked its target first in vain, then went through the guard",
            m.reads_not_on_target.clone(),
        );
        r.register(
            "reads_known_moved",
            "Reads of a migrating range whose keys the sidecar knew had moved, sent to the target alone in one round trip",
            m.reads_known_moved.clone(),
        );
        r.register(
            "reads_checked_on_target",
            "Reads of a drain into a range its target served already (a legacy Redis) that asked the target whether it held a newer copy of their keys",
            m.reads_checked_on_target.clone(),
        );
        r.register(
            "blind_writes_to_target",
            "Blind writes (SET, SETEX, MSET) of a drain into a range its target served already (a legacy Redis) whose keys the source's roster lacks, sent straight to the target",
            m.blind_writes_to_target.clone(),
        );
        r.register(
            "scripts_waited_for_groups",
            "Scripts of a migrating range that waited for the rebalance Job to move their slot groups whole",
            m.scripts_waited_for_groups.clone(),
        );
        m
    }

    /// The counters of `category`.
    pub fn category(&self, category: &str) -> CategoryMetrics {
        let labels = CategoryLabels {
            category: category.to_owned(),
        };
        CategoryMetrics {
            commands: self.commands.get_or_create_owned(&labels),
            hits: self.hits.get_or_create_owned(&labels),
            misses: self.misses.get_or_create_owned(&labels),
            errors: self.errors.get_or_create_owned(&labels),
            replicated: self.replicated.get_or_create_owned(&labels),
            replica_failures: self.replica_failures.get_or_create_owned(&labels),
            redelivered: self.redelivered.get_or_create_owned(&labels),
            replication_lag: self.replication_lag.get_or_create_owned(&labels),
        }
    }

    /// The handles of `instance`.
    pub fn backend(&self, instance: &str) -> BackendMetrics {
        let labels = InstanceLabels {
            redis_instance: instance.to_owned(),
        };
        BackendMetrics {
            latency: self.latency.get_or_create_owned(&labels),
            connections: self.connections.get_or_create_owned(&labels),
            in_flight: self.in_flight.get_or_create_owned(&labels),
            writes: self.writes.get_or_create_owned(&labels),
            window: Arc::default(),
        }
    }
}

impl BackendMetrics {
    /// Records a reply's latency.
    pub fn observe(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        self.window.record(latency);
    }

    /// Counts a request the instance never answered (it timed out, or the connection broke)
    /// after `waited`, in the window the heartbeat reports: an instance that stops answering
    /// is a slow one to the pacing of a copy, not a silent one. The histogram counts replies.
    pub fn unanswered(&self, waited: Duration) {
        self.window.record(waited);
    }
}

/// When each `async` result on its way to a replica was answered by its writer, so that a
/// scrape tells the age of the oldest: the replication lag as it stands now. The lag histogram
/// only learns of a result once it arrived; a replica that stopped taking them shows here at
/// once, and a write acknowledged longer ago than this age (with no replica failure counted)
/// is on its replica.
#[derive(Debug, Default)]
pub struct BacklogAge {
    /// (answered, ticket) of each result in flight; tickets tell equal moments apart.
    in_flight: Mutex<(u64, BTreeSet<(Instant, u64)>)>,
}

/// A result's entry in [`BacklogAge`].
#[derive(Debug)]
pub struct BacklogEntry(Instant, u64);

impl BacklogAge {
    /// Counts a result answered at `answered` until [`BacklogAge::leave`].
    pub fn enter(&self, answered: Instant) -> BacklogEntry {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.0 += 1;
        let ticket = in_flight.0;
        in_flight.1.insert((answered, ticket));
        BacklogEntry(answered, ticket)
    }

    /// The result of `entry` arrived, failed or was dropped.
    pub fn leave(&self, entry: &BacklogEntry) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.1.remove(&(entry.0, entry.1));
    }

    /// How long ago the oldest result in flight was answered (zero when none is).
    pub fn oldest(&self) -> Duration {
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight
            .1
            .first()
            .map_or(Duration::ZERO, |(answered, _)| answered.elapsed())
    }
}

impl Collector for BacklogAge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.oldest().as_secs_f64());
        let metric = encoder.encode_descriptor(
            "replication_backlog_age_seconds",
            "Time since the writer answered the oldest async write whose result is still on its way to a replica (0: none)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}
