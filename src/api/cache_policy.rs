//! `CachePolicy`: one application's data categories (by key prefix), where they live, their TTL
//! rules and how the fleet balances them — and, in status, the routing the operator published.

// `printcolumn(...)` entries repeat `type_ = ...` by design; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::core::{Selector, SelectorExt};
use kube::{CustomResource, KubeSchema, ResourceExt};
use serde::{Deserialize, Serialize};

use super::Duration;
use super::redis_instance::{InstancePhase, RedisInstance};

/// Annotation that asks for a rebalance plan now, whatever the thresholds say. Its value is
/// free text (a timestamp is customary); each new value triggers one plan.
pub const REBALANCE_NOW_ANNOTATION: &str = "redisfleet.io/rebalance-now";

/// Annotation that holds or stops rebalancing: `pause` holds the plan in progress at its next
/// safe point (and starts no other), `resume` (or no annotation) lets it go on, `cancel` rolls
/// the plan in progress back when no key has moved yet and starts no other.
pub const REBALANCE_CONTROL_ANNOTATION: &str = "redisfleet.io/rebalance";

/// What the `redisfleet.io/rebalance` annotation asks of the policy's rebalancing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RebalanceControl {
    /// No annotation, or `resume`: plans start and run.
    #[default]
    Run,
    /// `pause`: the plan in progress holds at its next safe point; no plan starts.
    Pause,
    /// `cancel`: the plan in progress is rolled back if no key has moved yet (else it runs to
    /// its end); no plan starts.
    Cancel,
}

impl RebalanceControl {
    /// The control a value of the annotation asks for; an unknown value is an error that
    /// names the annotation and the values it takes.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "resume") => Ok(Self::Run),
            Some("pause") => Ok(Self::Pause),
            Some("cancel") => Ok(Self::Cancel),
            Some(_) => Err(format!(
                "annotation {REBALANCE_CONTROL_ANNOTATION}={:?} is not understood (pause, resume or cancel); rebalancing goes on",
                value.unwrap_or_default()
            )),
        }
    }

    /// The control `policy`'s annotation asks for (an unknown value reads as [`Self::Run`]).
    pub fn of(policy: &CachePolicy) -> Self {
        Self::parse(
            policy
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REBALANCE_CONTROL_ANNOTATION))
                .map(String::as_str),
        )
        .unwrap_or_default()
    }
}

/// Name of the default category in the routing table: keys that match no prefix.
pub const DEFAULT_CATEGORY: &str = "default";

/// The refusal of a fallback tier equal to the tier, naming it.
const FALLBACK_TIER_MESSAGE: &str = "'fallbackTier must differ from tier: both are ' + self.tier";

/// Data categories of one application, their placement and TTL rules, and how the fleet
/// balances them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "redisfleet.io",
    version = "v1alpha1",
    kind = "CachePolicy",
    namespaced,
    status = "CachePolicyStatus",
    derive = "PartialEq",
    shortname = "cp",
    category = "redis-fleet",
    doc = "Data categories of one application, where they live, their TTL rules and how the fleet balances them.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".status.routing.version",
        description = "Version of the published routing table"
    ),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".spec.balancing.strategy"
    ),
    printcolumn(
        name = "Rebalance",
        type_ = "string",
        json_path = ".status.rebalance.phase"
    ),
    printcolumn(
        name = "ConfigMap",
        type_ = "string",
        json_path = ".status.routing.configMap",
        priority = 1
    ),
    printcolumn(
        name = "Sidecars",
        type_ = "integer",
        json_path = ".status.sidecars.count",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "Why the policy is or is not Ready",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicySpec {
    /// Which RedisInstances of this namespace form the fleet. Empty or absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_selector: Option<LabelSelector>,

    /// Name of the routing ConfigMap the operator publishes. Default: `<policy name>-routing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub routing_config_map: Option<String>,

    /// Data categories, each a set of key prefixes. A key belongs to the category with the
    /// longest matching prefix, else to `defaultCategory`.
    // The duplicate-prefix rule has a static message: a `messageExpression` naming the
    // category would concatenate a string taken from a `filter` result, whose size the API
    // server's cost estimator does not know, and it refuses the CRD (over 100x its budget).
    #[serde(default)]
    #[schemars(length(max = 200))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("self.all(c, c.keyPrefixes.all(p, self.exists_one(d, p in d.keyPrefixes)))").reason(Reason::FieldValueInvalid).message("a key prefix may belong to one category only: the same prefix is listed under two categories")
    )]
    pub categories: Vec<CategorySpec>,

    /// Placement and TTL of keys that match no category prefix.
    #[serde(default)]
    pub default_category: DefaultCategorySpec,

    /// How slots are spread over instances and when data is rebalanced.
    #[serde(default)]
    pub balancing: BalancingSpec,
}

/// One data category: its key prefixes, where its slots live and its TTL rules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.name != 'default'").field_path(".name").reason(Reason::FieldValueForbidden).message("'default' is reserved for spec.defaultCategory"))]
#[x_kube(validation = Rule::new("!has(self.tier) || !has(self.fallbackTier) || self.tier != self.fallbackTier").field_path(".fallbackTier").reason(Reason::FieldValueInvalid).message(Message::Expression(FALLBACK_TIER_MESSAGE.into())))]
#[serde(rename_all = "camelCase")]
pub struct CategorySpec {
    /// Category name, DNS-label-like (`auth`, `analytics-live`); unique within the policy.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// Key prefixes of the category (`auth:`, `session:`). Each prefix belongs to one category.
    #[schemars(length(min = 1, max = 8), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub key_prefixes: Vec<String>,

    /// Instances labelled `redisfleet.io/tier=<tier>` hold this category. Absent: all selected
    /// instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub tier: Option<String>,

    /// Where the category's slots are served while its own instances are unreachable.
    /// Absent: any other reachable instance of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub fallback_tier: Option<String>,

    /// TTL rules applied by the sidecar to writes of this category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<TtlSpec>,

    /// Whether the category's writes are copied to a replica on another instance, so that its
    /// data survives its owner's death (`docs/replication.md`). `Off` (the default): a failover
    /// serves an empty fallback. `Async`: a write is acknowledged once its owner ran it, and
    /// its replica follows (as `Sync` while a range of it is handed over to a new owner). `Sync`:
    /// once its replica has it too.
    #[serde(default, skip_serializing_if = "Replication::is_off")]
    pub replication: Replication,
}

/// Placement and TTL of keys that match no category.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!has(self.tier) || !has(self.fallbackTier) || self.tier != self.fallbackTier").field_path(".fallbackTier").reason(Reason::FieldValueInvalid).message(Message::Expression(FALLBACK_TIER_MESSAGE.into())))]
#[serde(rename_all = "camelCase")]
pub struct DefaultCategorySpec {
    /// Instances labelled `redisfleet.io/tier=<tier>` hold these keys. Absent: all selected
    /// instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub tier: Option<String>,

    /// Where these keys are served while their instances are unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub fallback_tier: Option<String>,

    /// TTL rules applied by the sidecar to writes of these keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<TtlSpec>,

    /// Whether these keys' writes are copied to a replica on another instance, so that their
    /// data survives their owner's death (`docs/replication.md`). `Off` (the default): a failover
    /// serves an empty fallback. `Async`: a write is acknowledged once its owner ran it, and
    /// its replica follows (as `Sync` while a range of it is handed over to a new owner). `Sync`:
    /// once its replica has it too.
    #[serde(default, skip_serializing_if = "Replication::is_off")]
    pub replication: Replication,
}

/// Where a replicated category's replicas stand.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CategoryReplicationStatus {
    /// Category name.
    pub category: String,
    /// `Async` or `Sync`: how its writes are acknowledged now (an `Async` category reads
    /// `Sync` while a range of it is handed over to a new owner).
    pub mode: String,
    /// Slots whose replica is seeded: `Sync` writes acknowledged on them survive their owner's
    /// death (`Async` ones, once older than the replication lag).
    pub replicated_slots: i32,
    /// Slots whose only replica is being seeded.
    #[serde(default)]
    pub seeding_slots: i32,
    /// Slots whose replica moves to another instance (counted in `replicatedSlots`): the new
    /// one is being seeded while the old one, seeded, still takes every write.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handover_slots: i32,
    /// Slots without a replica (moving, or no instance can hold one): their owner's death
    /// drops what only it held.
    #[serde(default)]
    pub unreplicated_slots: i32,
    /// The instances holding its replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Whether and how a category's writes reach a replica (`docs/replication.md`).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum Replication {
    /// No replica: the data lives on its owner only.
    #[default]
    Off,
    /// Acknowledged once the owner ran the write; the replica follows, with a measured lag.
    Async,
    /// Acknowledged once the owner ran the write and the replica has its result.
    Sync,
}

impl Replication {
    /// Whether the category is not replicated.
    pub fn is_off(&self) -> bool {
        *self == Self::Off
    }
}

/// TTL rules of a category, applied by the sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!has(self.default) || !has(self.max) || duration(self.default) <= duration(self.max)").field_path(".default").reason(Reason::FieldValueInvalid).message(Message::Expression("'ttl.default must not exceed ttl.max: ' + self.default + ' is longer than ' + self.max".into())))]
#[x_kube(validation = Rule::new("!self.adaptive || has(self.max)").field_path(".max").reason(Reason::FieldValueRequired).message("ttl.adaptive needs ttl.max, the longest TTL a frequently read key may get"))]
#[serde(rename_all = "camelCase")]
pub struct TtlSpec {
    /// Expiry given to a write that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Duration>,

    /// Longest expiry a key may have: longer EX/PX/EXPIRE values are capped to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,

    /// Extend the TTL of frequently read keys, up to `max`.
    #[serde(default)]
    pub adaptive: bool,
}

/// How slots are spread and when data is rebalanced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BalancingSpec {
    /// Smart: slots in proportion to capacity × weight. ConsistentHash: equal shares.
    /// Pinned: each category on a single instance.
    #[serde(default)]
    pub strategy: Strategy,

    /// Percentage of an instance's capacity that triggers a rebalance.
    #[serde(default = "default_capacity_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub capacity_threshold: i32,

    /// Automatic data movement.
    #[serde(default)]
    pub rebalance: RebalanceSpec,
}

impl Default for BalancingSpec {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            capacity_threshold: default_capacity_threshold(),
            rebalance: RebalanceSpec::default(),
        }
    }
}

fn default_capacity_threshold() -> i32 {
    80
}

/// How a category's slots are spread over its candidate instances.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum Strategy {
    /// In proportion to capacity × weight.
    #[default]
    Smart,
    /// Equal shares, whatever the capacity.
    ConsistentHash,
    /// The whole category on one instance.
    Pinned,
}

impl Strategy {
    /// The strategy as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smart => "Smart",
            Self::ConsistentHash => "ConsistentHash",
            Self::Pinned => "Pinned",
        }
    }
}

/// Automatic data movement between instances.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceSpec {
    /// Start rebalance Jobs when an instance passes the threshold or an instance joins. Off:
    /// ownership changes move no data (their keys read as misses); a plan under way still runs
    /// to its end.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Minimum time between the end of one rebalance and the start of the next.
    #[serde(default = "default_cooldown")]
    pub cooldown: Duration,

    /// Upper bound on keys moved per second by a rebalance Job.
    #[serde(default = "default_keys_per_second")]
    #[schemars(range(min = 1, max = 10000000))]
    pub keys_per_second: i32,

    /// Keys moved per pipelined batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: i32,

    /// How the copy yields to the application: `Adaptive` steers it, up to `keysPerSecond`, so
    /// that the p99 each sidecar sees from the instances it copies between stays near 1.25×
    /// their best during the Job and within its budget of 1.5× (or that best plus
    /// `latencyHeadroomMicroseconds` if more, the aim halfway); `Fixed` copies at
    /// `keysPerSecond` whatever the latency.
    #[serde(default)]
    pub pacing: Pacing,

    /// With `pacing: Adaptive`, what a copy may always add to a sidecar's p99 to an instance,
    /// in microseconds, where 1.5× its best is less. The default (0) holds the p99 to 1.5× its
    /// best; 1000 lets a copy beside a fast instance run several times faster, adding up to a
    /// millisecond to its p99.
    #[serde(default = "default_latency_headroom")]
    #[schemars(range(min = 0, max = 1000000))]
    pub latency_headroom_microseconds: i32,
}

/// How a rebalance copy is paced (`docs/protocol.md`, "Pacing").
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum Pacing {
    /// Up to `keysPerSecond`, slower while the sidecars' p99 to the source or target is above
    /// 1.5× its lowest during the Job.
    #[default]
    Adaptive,
    /// At `keysPerSecond`.
    Fixed,
}

impl Default for RebalanceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            cooldown: default_cooldown(),
            keys_per_second: default_keys_per_second(),
            batch_size: default_batch_size(),
            pacing: Pacing::default(),
            latency_headroom_microseconds: default_latency_headroom(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_cooldown() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(300))
}
fn default_keys_per_second() -> i32 {
    50_000
}
fn default_batch_size() -> i32 {
    256
}
/// `latencyHeadroomMicroseconds` unless the policy says otherwise: none, so that an Adaptive
/// copy holds each sidecar's p99 within 1.5× what it sees without the copy.
pub const DEFAULT_LATENCY_HEADROOM_MICROS: i32 = 0;

fn default_latency_headroom() -> i32 {
    DEFAULT_LATENCY_HEADROOM_MICROS
}

/// What the operator published and observed for a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `RoutingPublished`, `Rebalancing`, `Degraded` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions::schema")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The routing table last published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingStatus>,

    /// The selected instances and what they hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<PolicyInstanceStatus>,

    /// Categories served away from their instances because those are unreachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failovers: Vec<FailoverStatus>,

    /// The rebalance in progress or last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceStatus>,

    /// Sidecars that reported a heartbeat recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<SidecarsStatus>,

    /// Memory per category and instance, from samples taken while probing. In a large fleet
    /// (more than 256 pairs) one entry per category, summed over its instances, with
    /// `instance: "*"`, so that the status stays small.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<CategoryUsage>,

    /// The replicated categories: how many of their slots have a seeded replica, one being
    /// seeded, or none (`docs/replication.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<CategoryReplicationStatus>,

    /// Capacity-planning advice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<String>,
}

/// The routing table last published.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoutingStatus {
    /// Name of the routing ConfigMap.
    pub config_map: String,
    /// Table version; increases by one on every change.
    pub version: i64,
    /// Hash of the table content.
    pub hash: String,
    /// When this version was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<Time>,
}

/// One selected instance as the policy sees it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInstanceStatus {
    /// RedisInstance name.
    pub name: String,
    /// Its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InstancePhase>,
    /// Its memory use as a percentage of capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<i32>,
    /// Categories with slots on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Number of slots (over all categories) it owns.
    #[serde(default)]
    pub slots: i32,
}

/// A category served away from its instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    /// Category name.
    pub category: String,
    /// The unreachable instance.
    pub from: String,
    /// The instance serving its slots meanwhile.
    pub to: String,
    /// Number of slots moved.
    pub slots: i32,
    /// When the failover started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// Rebalance steps reported by the Job (`status.rebalance.step`).
pub mod rebalance_step {
    /// Deleting stale copies on the targets.
    pub const PREPARING: &str = "Preparing";
    /// Targets clean; waiting for the operator to publish the migrating ranges.
    pub const PREPARED: &str = "Prepared";
    /// Waiting for every sidecar to use the table with the migrating ranges.
    pub const CONVERGING: &str = "Converging";
    /// Fencing older tables off the sources and targets (closing their connections).
    pub const FENCING: &str = "Fencing";
    /// The sources are importing: keys they no longer hold live on the targets.
    pub const IMPORTING: &str = "Importing";
    /// Moving keys.
    pub const COPYING: &str = "Copying";
    /// Holding the copy (`redisfleet.io/rebalance: pause`): no key in transit, keys that
    /// sidecars ask for still move.
    pub const PAUSED: &str = "Paused";
    /// Holding the copy, as paused, because a source may evict keys without a TTL (its
    /// `maxmemory-policy` was switched to `allkeys-*` after the plan started); `pacing` names
    /// it. The copy goes on once the policy is fixed.
    pub const SOURCE_EVICTING: &str = "SourceEvicting";
    /// Every key moved; waiting for the operator to publish the new owners.
    pub const COPIED: &str = "Copied";
    /// Finished and cleaned up.
    pub const DONE: &str = "Done";
}

/// Rebalance phases decided by the operator (`status.rebalance.phase`).
pub mod rebalance_phase {
    /// The Job prepares the targets.
    pub const PREPARING: &str = "Preparing";
    /// The migrating ranges are published; the Job converges and copies.
    pub const MIGRATING: &str = "Migrating";
    /// The new owners are published; the Job cleans up.
    pub const FINALIZING: &str = "Finalizing";
    /// Done.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Given up after retries (see message).
    pub const FAILED: &str = "Failed";
}

/// Progress of a rebalance. The operator owns the plan and its phase; the Job reports its
/// `step` and the counters (fields marked "Job").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceStatus {
    /// Preparing, Migrating, Finalizing, Succeeded or Failed.
    pub phase: String,
    /// Identifies the plan: the routing table version it was computed from.
    #[serde(default)]
    pub plan_id: i64,
    /// Name of the Job moving the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Why this rebalance was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Slot ranges being moved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<MoveStatus>,
    /// Routing version that published the migrating ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip_version: Option<i64>,
    /// Routing version that published the new owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_version: Option<i64>,
    /// Attempts made (a failed Job is retried with backoff).
    #[serde(default)]
    pub attempts: i32,
    /// When the rebalance started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the operator first found the Job of the current attempt gone once the plan's
    /// attempts were spent: the next attempt waits the failed-attempt delay from then (kept
    /// here, so that an operator restart does not start the wait again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_missing_since: Option<Time>,
    /// The value of the `redisfleet.io/rebalance-now` annotation this plan answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_by: Option<String>,
    /// The plan is held by `redisfleet.io/rebalance: pause`: the Job moves no key and the
    /// operator publishes no flip until it is resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// A `redisfleet.io/rebalance: cancel` came after keys had moved: the plan runs to its end
    /// (the cancel is not tried again for this plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_refused: Option<bool>,
    /// Job: its current step (Preparing, Prepared, Converging, Fencing, Importing, Copying,
    /// Paused, SourceEvicting, Copied, Done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Job: keys moved so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_moved: Option<i64>,
    /// Job: keys to move (counted before copying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_total: Option<i64>,
    /// Job: current copy rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_per_second: Option<i64>,
    /// Job: sidecars still on an older table while converging.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stragglers: Vec<String>,
    /// Job: why the copy runs below `keysPerSecond` (`pacing: Adaptive`: a sidecar sees the
    /// source or target answer slower than its budget or its aim, or the copy grows back
    /// toward it), or why it holds (step
    /// `SourceEvicting`: a source may evict keys without a TTL); absent while it runs at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<String>,
    /// How the plan balances the fleet: the planner's estimate, and what was measured once
    /// it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<RebalanceBalance>,
}

/// How a rebalance balances the fleet: every instance's used share within `bandPoints` of
/// the fleet's mean. The planner's estimates from the sampled memory, next to what was
/// measured once the plan finished.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceBalance {
    /// The fleet's mean used share when planned, in percent: the policy's bytes over the
    /// capacity of the instances that may hold them.
    pub mean_percent: f64,
    /// Half-width of the band, in percentage points around the mean.
    pub band_points: i32,
    /// Bytes the plan moves, as the planner estimates them.
    pub estimated_bytes: i64,
    /// Keys the plan moves, as the planner estimates them.
    pub estimated_keys: i64,
    /// The least bytes that bring every instance within the band, as far as the tier rules
    /// allow (planner's estimate; absent for plans the balance planner did not make, such as
    /// a failback alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_bytes: Option<i64>,
    /// Measured once the plan finished: half the summed change of the instances' used memory
    /// between the start and the first probes after the end (what left the sources and
    /// arrived at the targets; writes meanwhile count too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_bytes: Option<i64>,
    /// Each instance: before, planned, and measured after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceBalanceStatus>,
}

/// One instance in a rebalance's balance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceBalanceStatus {
    /// RedisInstance name.
    pub name: String,
    /// Capacity in bytes (0: unknown).
    pub capacity_bytes: i64,
    /// Used memory when planned.
    pub used_bytes_before: i64,
    /// Used memory the planner expects once the plan is done.
    pub planned_bytes: i64,
    /// Used memory measured after the plan finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes_after: Option<i64>,
}

impl RebalanceStatus {
    /// Whether the plan is under way (its ranges must stay as the phase says).
    pub fn is_active(&self) -> bool {
        matches!(
            self.phase.as_str(),
            rebalance_phase::PREPARING | rebalance_phase::MIGRATING | rebalance_phase::FINALIZING
        )
    }
}

/// The `status.rebalance` fields the Job writes; the operator leaves them out of its own
/// writes so that the two never overwrite each other.
pub const JOB_OWNED_REBALANCE_FIELDS: [&str; 6] = [
    "step",
    "keysMoved",
    "keysTotal",
    "keysPerSecond",
    "stragglers",
    "pacing",
];

/// Sampled memory of one category on one instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CategoryUsage {
    /// RedisInstance name; `*` for the sum over all instances (large fleets).
    pub instance: String,
    /// Category name.
    pub category: String,
    /// Estimated bytes (sampled keys' MEMORY USAGE, scaled to the instance's key count).
    pub bytes: i64,
    /// Estimated keys (the sampled keys' share, scaled to the instance's key count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    /// Estimated bytes the instance holds as the replica of this category's slots that
    /// another instance serves (not in `bytes`: they stay when those slots move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_bytes: Option<i64>,
}

/// One slot range moving between instances.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MoveStatus {
    /// Category name.
    pub category: String,
    /// First slot of the range.
    pub start: i32,
    /// Last slot of the range (inclusive).
    pub end: i32,
    /// Source instance.
    pub from: String,
    /// Target instance.
    pub to: String,
    /// Whether the target served the range already when the plan was made (a draining
    /// instance emptied into the range's owner: the target's copies are live and no
    /// failback gives the range to the source). Recorded at planning, before the flip: a
    /// failback's flip table looks the same as such a move's, so a Job attempt started after
    /// it cannot tell them apart from the table. Absent in plans of older operators (the Job
    /// then reads it off the table it finds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_serves: Option<bool>,
}

/// Sidecars that use this policy's routing table.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarsStatus {
    /// Sidecars with a live heartbeat.
    pub count: i32,
    /// Lowest table version among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<i64>,
}

/// The routing ConfigMap name of a policy: `spec.routingConfigMap`, else `<policy>-routing`.
pub fn config_map_name(policy: &CachePolicy) -> String {
    policy
        .spec
        .routing_config_map
        .clone()
        .unwrap_or_else(|| format!("{}-routing", policy.name_any()))
}

/// The Secret holding a copy of every credential the policy's routing table references, for
/// sidecars to mount whole: `<routing ConfigMap name>-credentials`.
pub fn credentials_secret_name(policy: &CachePolicy) -> String {
    format!("{}-credentials", config_map_name(policy))
}

/// Whether `policy` selects `instance` (same namespace assumed).
pub fn selects(policy: &CachePolicy, instance: &RedisInstance) -> bool {
    match &policy.spec.instance_selector {
        None => true,
        Some(selector) => {
            Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(instance.labels()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rebalance_annotation_takes_pause_resume_and_cancel_and_names_itself_otherwise() {
        assert_eq!(RebalanceControl::parse(None), Ok(RebalanceControl::Run));
        assert_eq!(RebalanceControl::parse(Some("")), Ok(RebalanceControl::Run));
        assert_eq!(
            RebalanceControl::parse(Some("resume")),
            Ok(RebalanceControl::Run)
        );
        assert_eq!(
            RebalanceControl::parse(Some(" pause ")),
            Ok(RebalanceControl::Pause)
        );
        assert_eq!(
            RebalanceControl::parse(Some("Pause")),
            Ok(RebalanceControl::Pause)
        );
        assert_eq!(
            RebalanceControl::parse(Some("cancel")),
            Ok(RebalanceControl::Cancel)
        );
        let err = RebalanceControl::parse(Some("stop")).unwrap_err();
        assert!(err.contains(REBALANCE_CONTROL_ANNOTATION) && err.contains("\"stop\""));
        assert!(err.contains("pause, resume or cancel"));
    }
}
