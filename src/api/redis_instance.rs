//! `RedisInstance`: one Redis endpoint of the fleet — an external Redis the operator connects
//! to, or one the operator runs itself — and the health the operator last observed.

// `printcolumn(...)` entries repeat `type_ = ...` by design; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{ByteSize, Duration};

/// Label that puts an instance in a tier (`hot`, `warm`, …); categories pick instances by tier.
pub const TIER_LABEL: &str = "redisfleet.io/tier";

/// One Redis endpoint of the fleet: exactly one of `external` (a Redis that exists elsewhere,
/// e.g. a hosted 30 MB instance) or `managed` (a Redis the operator runs as a StatefulSet).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "redisfleet.io",
    version = "v1alpha1",
    kind = "RedisInstance",
    namespaced,
    status = "RedisInstanceStatus",
    derive = "PartialEq",
    shortname = "ri",
    category = "redis-fleet",
    doc = "One Redis endpoint of a redis-fleet: an external Redis the operator connects to, or one it runs itself.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the instance can serve traffic (the Ready condition)"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Ready, Degraded, Unreachable or Draining"
    ),
    printcolumn(
        name = "Used",
        type_ = "string",
        json_path = ".status.memory.used",
        description = "Memory used (INFO used_memory)"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.memory.capacity",
        description = "spec.capacity, else maxmemory"
    ),
    printcolumn(
        name = "Usage%",
        type_ = "integer",
        json_path = ".status.memory.usedPercent",
        description = "Used memory as a percentage of capacity"
    ),
    printcolumn(
        name = "Hit%",
        type_ = "integer",
        json_path = ".status.stats.hitPercent",
        description = "Keyspace hit ratio over the last probe window"
    ),
    printcolumn(
        name = "Latency",
        type_ = "string",
        json_path = ".status.latency",
        description = "Last PING round trip"
    ),
    printcolumn(
        name = "Tier",
        type_ = "string",
        json_path = ".metadata.labels.redisfleet\\.io/tier",
        priority = 1
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        priority = 1
    ),
    printcolumn(
        name = "Keys",
        type_ = "integer",
        json_path = ".status.keys",
        priority = 1
    ),
    printcolumn(
        name = "Eviction",
        type_ = "string",
        json_path = ".status.evictionPolicy",
        description = "maxmemory-policy as the server reports it",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "Why the instance is or is not Ready",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.external) != has(self.managed)").reason(Reason::FieldValueInvalid).message(Message::Expression("has(self.external) ? 'spec: set exactly one of spec.external (a Redis the operator connects to) or spec.managed (a Redis the operator runs), not both' : 'spec: set exactly one of spec.external (a Redis the operator connects to) or spec.managed (a Redis the operator runs); neither is set'".into())))]
#[serde(rename_all = "camelCase")]
pub struct RedisInstanceSpec {
    /// A Redis that already runs elsewhere (hosted, VM, another cluster). Exactly one of
    /// `external` and `managed` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,

    /// A Redis that the operator runs itself as a one-replica StatefulSet with a Service.
    /// Exactly one of `external` and `managed` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,

    /// Usable memory of this instance. When absent, the operator uses the server's `maxmemory`;
    /// when that is 0 (unbounded) too, the instance is not Ready until a capacity is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ByteSize>,

    /// This instance's share of a category's slots relative to the other candidates, on top of
    /// its capacity (Smart strategy). 100 is the default; 200 takes twice the share.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 10000))]
    pub weight: i32,

    /// When true, nothing new is placed on this instance and its data is moved to the other
    /// candidates (retiring an instance, or emptying the old single Redis into the fleet).
    #[serde(default)]
    pub drain: bool,

    /// How the operator probes this instance and when it declares it unreachable.
    #[serde(default)]
    pub health: HealthSpec,
}

fn default_weight() -> i32 {
    100
}

/// Connection details of a Redis the operator does not run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Host name or IP address of the Redis server.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// TCP port of the Redis server.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// TLS settings; plain TCP when absent or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Secret key holding the ACL user name (Redis 6+). Absent: the `default` user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,

    /// Secret key holding the password. Absent: no AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

fn default_port() -> i32 {
    6379
}

/// TLS settings for connections to an external Redis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!self.insecureSkipVerify || self.enabled").field_path(".insecureSkipVerify").reason(Reason::FieldValueForbidden).message("tls.insecureSkipVerify is only meaningful with tls.enabled: true"))]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Connect with TLS.
    #[serde(default)]
    pub enabled: bool,

    /// Secret key holding the PEM CA bundle that signs the server's certificate. Absent: the
    /// system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// Skip verification of the server's certificate. Only for testing: it allows anyone on the
    /// path to read the traffic and the password.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A key of a Secret in the same namespace.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the resource).
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A Redis the operator runs: a one-replica StatefulSet, a Service, a ConfigMap with
/// `redis.conf` and, unless given, a generated password Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    /// Container image of the Redis server.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// `maxmemory` of the server; also its capacity unless `spec.capacity` is set.
    pub max_memory: ByteSize,

    /// `maxmemory-policy` of the server.
    #[serde(default)]
    pub eviction_policy: EvictionPolicy,

    /// Persistent storage for RDB snapshots. Absent: no persistence (a pure cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// Resource requests and limits of the Redis container. Absent: a request of the memory
    /// that `maxMemory` needs plus overhead, and no CPU limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Secret key holding the password to require. Absent: the operator generates one in the
    /// Secret `<name>-redis-auth` (key `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

fn default_image() -> String {
    "redis:7.2".to_owned()
}

/// Persistent volume for a managed Redis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of the volume.
    pub size: ByteSize,

    /// StorageClass of the volume. Absent: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// Redis `maxmemory-policy`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    /// Evict any key, least recently used first. Not for an instance rebalancing moves data
    /// out of: it may evict the fleet's own bookkeeping keys, which carry no TTL.
    AllkeysLru,
    /// Evict any key, least frequently used first.
    AllkeysLfu,
    /// Evict random keys.
    AllkeysRandom,
    /// Evict keys with an expiry, least recently used first (the default: with `ttl.default`
    /// on every category, every application key can be evicted, and the fleet's own keys,
    /// which carry no TTL, never are).
    #[default]
    VolatileLru,
    /// Evict keys with an expiry, least frequently used first.
    VolatileLfu,
    /// Evict random keys with an expiry.
    VolatileRandom,
    /// Evict keys with an expiry, nearest expiry first.
    VolatileTtl,
    /// Never evict: writes fail when memory is full.
    Noeviction,
}

impl EvictionPolicy {
    /// Every policy.
    pub const ALL: [Self; 8] = [
        Self::AllkeysLru,
        Self::AllkeysLfu,
        Self::AllkeysRandom,
        Self::VolatileLru,
        Self::VolatileLfu,
        Self::VolatileRandom,
        Self::VolatileTtl,
        Self::Noeviction,
    ];

    /// The value Redis expects in `maxmemory-policy`.
    pub fn as_redis(self) -> &'static str {
        match self {
            Self::AllkeysLru => "allkeys-lru",
            Self::AllkeysLfu => "allkeys-lfu",
            Self::AllkeysRandom => "allkeys-random",
            Self::VolatileLru => "volatile-lru",
            Self::VolatileLfu => "volatile-lfu",
            Self::VolatileRandom => "volatile-random",
            Self::VolatileTtl => "volatile-ttl",
            Self::Noeviction => "noeviction",
        }
    }
}

/// Whether a server with this `maxmemory-policy` (as `INFO memory` reports it) may evict
/// keys without a TTL: the `allkeys-*` policies. The fleet's own keys — markers, tombstones,
/// slot group states, fences — carry no TTL, and a move out of such an instance could lose
/// one mid-way (`docs/protocol.md`, "Eviction").
pub fn evicts_keys_without_ttl(policy: &str) -> bool {
    policy.starts_with("allkeys-")
}

/// How the operator probes an instance and judges its health.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.timeout) <= duration(self.interval)").field_path(".timeout").reason(Reason::FieldValueInvalid).message(Message::Expression("'health.timeout must not exceed health.interval: ' + self.timeout + ' is longer than ' + self.interval".into())))]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// Time between two probes.
    #[serde(default = "default_interval")]
    pub interval: Duration,

    /// Time a probe may take before it counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,

    /// Consecutive failed probes after which the instance is Unreachable and its slots fail over.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,

    /// Consecutive good probes after which an Unreachable instance is Ready again.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub recovery_threshold: i32,

    /// PING round trip above which the instance is slow: Degraded (`HighLatency`) after
    /// `failureThreshold` slow probes in a row, Ready again after `recoveryThreshold` fast ones
    /// (one slow PING on a busy network does not flip the phase).
    #[serde(default = "default_latency_threshold")]
    pub latency_threshold: Duration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            timeout: default_timeout(),
            failure_threshold: default_threshold(),
            recovery_threshold: default_threshold(),
            latency_threshold: default_latency_threshold(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(5))
}
fn default_timeout() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(1))
}
fn default_threshold() -> i32 {
    3
}
fn default_latency_threshold() -> Duration {
    Duration::from_std(std::time::Duration::from_millis(50))
}

/// Lifecycle phase of an instance as the operator last observed it.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
pub enum InstancePhase {
    /// Not probed successfully yet, or waiting for its managed StatefulSet.
    #[default]
    Pending,
    /// Reachable, within capacity, answering quickly.
    Ready,
    /// Reachable but slow, over capacity or evicting keys.
    Degraded,
    /// `failureThreshold` consecutive probes failed; its slots are served elsewhere.
    Unreachable,
    /// `spec.drain` is set: its data is being moved away.
    Draining,
}

impl InstancePhase {
    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
            Self::Unreachable => "Unreachable",
            Self::Draining => "Draining",
        }
    }

    /// Whether the instance can serve traffic (its slots stay on it).
    pub fn serves_traffic(self) -> bool {
        matches!(self, Self::Ready | Self::Degraded | Self::Draining)
    }
}

impl std::fmt::Display for InstancePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator last observed of an instance. Never contains credentials. Written when
/// the phase, a condition or the memory (by a point of capacity) changes, else once per
/// status refresh (5 minutes by default; a second per instance in a fleet of more than 300):
/// latency, traffic and keys are as of that write, the operator's metrics have them at every
/// probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisInstanceStatus {
    /// Pending, Ready, Degraded, Unreachable or Draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InstancePhase>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `host:port` the operator probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// Server version from `INFO server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_version: Option<String>,

    /// Memory use against capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStatus>,

    /// Number of keys in all databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,

    /// `maxmemory-policy` as the server reports it (`INFO memory`), e.g. `volatile-lru`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_policy: Option<String>,

    /// Traffic statistics over the last probe window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsStatus>,

    /// Last PING round trip in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_micros: Option<i64>,

    /// Last PING round trip, for humans (e.g. `420µs`, `1.2ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,

    /// Probes failed in a row.
    #[serde(default)]
    pub consecutive_failures: i32,

    /// Probes succeeded in a row.
    #[serde(default)]
    pub consecutive_successes: i32,

    /// Answered probes slower than `health.latencyThreshold` in a row.
    #[serde(default)]
    pub consecutive_slow_probes: i32,

    /// Answered probes within `health.latencyThreshold` in a row.
    #[serde(default)]
    pub consecutive_fast_probes: i32,

    /// When the probe this status reports finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,

    /// `Reachable`, `WithinCapacity`, `EvictionSafe` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions::schema")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Memory use of an instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    /// `used_memory` from `INFO memory`.
    pub used_bytes: i64,
    /// `spec.capacity`, else `maxmemory`; 0 when unknown.
    pub capacity_bytes: i64,
    /// `usedBytes` as a whole percentage of `capacityBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<i32>,
    /// `usedBytes` for humans (e.g. `12.0Mi`).
    pub used: String,
    /// `capacityBytes` for humans (e.g. `30.0Mi`); `unknown` when unknown.
    pub capacity: String,
}

/// Traffic statistics of an instance. Rates cover the window between the last two probes,
/// not the server's whole lifetime.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatsStatus {
    /// Keyspace hits during the last probe window.
    pub hits: i64,
    /// Keyspace misses during the last probe window.
    pub misses: i64,
    /// hits / (hits + misses) over the window; absent when there were no reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit_ratio: Option<f64>,
    /// `hitRatio` as a whole percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit_percent: Option<i32>,
    /// Commands per second over the window.
    pub ops_per_second: i64,
    /// Connected clients.
    pub connected_clients: i64,
    /// Keys evicted since the server started.
    pub evicted_keys: i64,
}

// Names derived from a managed instance: the operator creates these objects, the routing
// table and the operator's probes address them.

/// Port of every managed Redis.
pub const REDIS_PORT: u16 = 6379;

/// Key of the generated password in the generated Secret.
pub const PASSWORD_KEY: &str = "password";

/// Names of the objects behind a managed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// StatefulSet and Service.
    pub workload: String,
    /// ConfigMap with redis.conf.
    pub config: String,
    /// Generated password Secret.
    pub auth_secret: String,
}

impl Names {
    /// Names derived from the RedisInstance name.
    pub fn of(instance: &str) -> Self {
        Self {
            workload: format!("{instance}-redis"),
            config: format!("{instance}-redis-config"),
            auth_secret: format!("{instance}-redis-auth"),
        }
    }
}

/// The Service DNS name the operator and sidecars use for a managed instance.
pub fn managed_host(instance: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc", Names::of(instance).workload)
}

/// The Secret key holding a managed instance's password: the user's, else the generated one.
pub fn password_ref(instance: &str, managed: &ManagedRedis) -> SecretKeyRef {
    managed
        .password_secret_ref
        .clone()
        .unwrap_or_else(|| SecretKeyRef {
            name: Names::of(instance).auth_secret,
            key: PASSWORD_KEY.to_owned(),
        })
}
