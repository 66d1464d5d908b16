//! The snapshot `redis-fleet status` shows: everything at one moment, as plain data — also the
//! `-o json` document (see [`super::SCHEMA_VERSION`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::cache_policy::{CategoryReplicationStatus, RebalanceStatus, Strategy};
use crate::api::redis_instance::InstancePhase;
use crate::routing::table::Migration;

/// Everything `redis-fleet status` shows, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Format of this document; see [`SCHEMA_VERSION`](super::SCHEMA_VERSION).
    pub schema_version: u32,
    /// The namespace shown.
    pub namespace: String,
    /// The one policy asked for; absent for a namespace view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// When the objects were read.
    pub generated_at: Timestamp,
    /// The policies, by name.
    pub policies: Vec<PolicySnapshot>,
    /// Instances of the namespace that no policy selects (namespace view only).
    #[serde(default)]
    pub unselected_instances: Vec<InstanceSnapshot>,
}

/// The `-A -o json` document: the snapshot of every namespace that has a CachePolicy or a
/// RedisInstance, by namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllNamespaces {
    /// Format of this document and of the snapshots in it; see
    /// [`SCHEMA_VERSION`](super::SCHEMA_VERSION).
    pub schema_version: u32,
    /// One snapshot per namespace.
    pub namespaces: Vec<Snapshot>,
}

/// One CachePolicy and its fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySnapshot {
    /// Policy name.
    pub name: String,
    /// The Ready condition; absent before the first reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// `spec.balancing.strategy`.
    pub strategy: Strategy,
    /// `spec.balancing.capacityThreshold` in percent.
    pub capacity_threshold: i32,
    /// The published routing table.
    pub routing: RoutingSnapshot,
    /// Sidecars using the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<SidecarsSnapshot>,
    /// The selected instances, by name.
    pub instances: Vec<InstanceSnapshot>,
    /// What fills each instance: its sampled memory by category (`status.usage`), by
    /// instance name.
    #[serde(default)]
    pub memory: Vec<InstanceMemorySnapshot>,
    /// Categories in table order (spec order, the default category last).
    pub categories: Vec<CategorySnapshot>,
    /// Slots served by a fallback while their owner is unavailable.
    #[serde(default)]
    pub failovers: Vec<FailoverSnapshot>,
    /// Slot ranges in flight (from the routing table).
    #[serde(default)]
    pub migrating: Vec<Migration>,
    /// The replicated categories and where their replicas stand (`status.replication`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<CategoryReplicationStatus>,
    /// The rebalance in progress or last finished (`status.rebalance` verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceStatus>,
    /// Capacity-planning advice.
    #[serde(default)]
    pub recommendations: Vec<String>,
    /// The policy's conditions.
    #[serde(default)]
    pub conditions: Vec<ConditionSnapshot>,
}

/// The routing table as published.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingSnapshot {
    /// Routing ConfigMap name.
    pub config_map: String,
    /// Table version: the ConfigMap's, else the one in the policy status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Hash of the table content (from the policy status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When that version was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<Timestamp>,
    /// Why the table could not be read, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sidecars that reported a heartbeat recently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarsSnapshot {
    /// Live sidecars.
    pub count: i32,
    /// Lowest table version among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<i64>,
    /// Whether some sidecar still routes by an older version than the published one.
    pub behind: bool,
}

/// One RedisInstance as last probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSnapshot {
    /// RedisInstance name.
    pub name: String,
    /// `redisfleet.io/tier` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Phase (Pending before the first probe).
    pub phase: InstancePhase,
    /// `spec.drain`.
    #[serde(default)]
    pub drain: bool,
    /// `host:port` probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Memory used (last probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Capacity: status, else `spec.capacity`, else `spec.managed.maxMemory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// `usedBytes` as a percentage of `capacityBytes` (two decimals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<f64>,
    /// Keyspace hit ratio over the last probe window, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit_percent: Option<i32>,
    /// Commands per second over the last probe window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_second: Option<i64>,
    /// Keys in all databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    /// Last PING round trip, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// Last PING round trip in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_micros: Option<i64>,
    /// When the last probe finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Timestamp>,
    /// Its conditions.
    #[serde(default)]
    pub conditions: Vec<ConditionSnapshot>,
}

/// One instance's sampled memory by category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMemorySnapshot {
    /// RedisInstance name.
    pub instance: String,
    /// Its categories, the largest first.
    pub categories: Vec<CategoryMemorySnapshot>,
}

/// One category's sampled memory on an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryMemorySnapshot {
    /// Category name.
    pub category: String,
    /// Estimated bytes.
    pub bytes: u64,
    /// Estimated keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// `bytes` as a percentage of the instance's sampled bytes (two decimals).
    pub percent: f64,
    /// The instance holds these bytes as the replica of the category's slots that another
    /// instance serves (an entry of its own beside the category's served bytes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica: bool,
}

/// One category and where its slots live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategorySnapshot {
    /// Category name (`default` for keys that match no prefix).
    pub name: String,
    /// Key prefixes; empty for the default category.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Tier of its instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Tier serving it while its instances are unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_tier: Option<String>,
    /// TTL rules.
    pub ttl: TtlSnapshot,
    /// Owners of its slots, most slots first; empty when no table is published.
    #[serde(default)]
    pub placement: Vec<SlotShare>,
}

/// TTL rules as written (`1h`, `24h`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TtlSnapshot {
    /// Expiry of writes that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Longest expiry allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// Frequently read keys get longer TTLs, up to `max`.
    #[serde(default)]
    pub adaptive: bool,
}

/// An instance's share of a category's slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotShare {
    /// RedisInstance name.
    pub instance: String,
    /// Number of slots (of 16384).
    pub slots: u32,
    /// `slots` as a percentage of 16384 (two decimals).
    pub percent: f64,
}

/// A category (or part of one) served by a fallback instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSnapshot {
    /// Category name.
    pub category: String,
    /// The unavailable owner.
    pub from: String,
    /// The instance serving meanwhile.
    pub to: String,
    /// Slots served by `to`.
    pub slots: u32,
    /// When the failover started (from the policy status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
}

/// A status condition, with whether it is the healthy value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSnapshot {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// Human message.
    #[serde(default)]
    pub message: String,
    /// When the status last changed.
    pub since: Timestamp,
    /// Whether this is the healthy value (`Degraded=False`, `Ready=True`, …).
    pub healthy: bool,
}
