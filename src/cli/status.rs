//! `redis-fleet status [-n NS] [POLICY] [-o table|json]`: a terminal view of a namespace's
//! fleet or of one CachePolicy — instances with usage bars against the capacity threshold,
//! categories and where their slots live, the routing version and the sidecars on it,
//! failovers, migrations, rebalance progress, advice and unhealthy conditions.
//!
//! Three steps, and only the first touches the API server:
//! 1. [`fetch`] reads RedisInstances, CachePolicies and their routing ConfigMaps;
//! 2. [`build`] turns those objects into a [`Snapshot`] (pure) — also the `-o json` document;
//! 3. [`render`] draws a snapshot as text for a terminal of a given width (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::api::cache_policy::{
    CachePolicy, CachePolicySpec, DEFAULT_CATEGORY, RebalanceStatus, Strategy, TtlSpec,
    config_map_name, selects,
};
use crate::api::quantity::format_bytes_human;
use crate::api::redis_instance::{InstancePhase, RedisInstance, TIER_LABEL};
use crate::routing::config_map::{annotated_version, table_of};
use crate::routing::slots::SLOT_COUNT;
use crate::routing::table::{Migration, SlotOwner, TABLE_KEY, TtlRules};

/// `schemaVersion` of the `-o json` document. New optional fields may be added without
/// bumping it; renaming or removing one bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Terminal width used when `COLUMNS` is unset or not a number.
pub const DEFAULT_WIDTH: usize = 100;

// ---------------------------------------------------------------------------------------------
// Command line

/// Arguments of `redis-fleet status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Namespace to show. Default: the namespace of the current kubeconfig context (or of the
    /// service account in a pod).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Show only this CachePolicy. Default: every policy of the namespace, and the instances
    /// no policy selects.
    #[arg(value_name = "POLICY")]
    pub policy: Option<String>,

    /// Output format: a terminal view, or the same snapshot as JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable view with usage bars.
    #[default]
    Table,
    /// The same snapshot as pretty-printed JSON, with a `schemaVersion`.
    Json,
}

/// Why `redis-fleet status` could not show anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither an in-cluster service account nor a usable kubeconfig.
    #[error(
        "no Kubernetes cluster found (tried KUBECONFIG, ~/.kube/config and the in-cluster service account): {0}"
    )]
    NoCluster(String),
    /// The API server did not answer.
    #[error("cannot reach the Kubernetes API server at {server}: {message}")]
    Unreachable {
        /// Cluster URL.
        server: String,
        /// Cause.
        message: String,
    },
    /// The CRDs are not installed.
    #[error(
        "the redis-fleet resource types are not installed in this cluster (install them with `kubectl apply --server-side -f crds/`)"
    )]
    CrdsMissing,
    /// The POLICY argument names no CachePolicy.
    #[error("CachePolicy {name:?} not found in namespace {namespace:?} ({})", available_hint(.available))]
    PolicyNotFound {
        /// Namespace searched.
        namespace: String,
        /// Policy asked for.
        name: String,
        /// Policies that exist there.
        available: Vec<String>,
    },
    /// The API server refused a request (permissions, …).
    #[error("reading {what} in namespace {namespace:?}: {message}")]
    Api {
        /// What was read.
        what: &'static str,
        /// Namespace.
        namespace: String,
        /// The API server's message.
        message: String,
        /// Whether the request never got an answer (connection refused, TLS, timeout).
        transport: bool,
    },
    /// The snapshot could not be encoded (not expected for plain data).
    #[error("encoding the snapshot as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn available_hint(available: &[String]) -> String {
    if available.is_empty() {
        "there is no CachePolicy in that namespace".to_owned()
    } else {
        format!("policies there: {}", available.join(", "))
    }
}

/// A cluster connection found the usual way.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The kubeconfig context's namespace (or the service account's).
    pub default_namespace: String,
    /// The API server URL, for messages.
    pub server: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("default_namespace", &self.default_namespace)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Connects the usual way (`KUBECONFIG` / `~/.kube/config`, else the in-cluster service
/// account), with timeouts so that an unreachable cluster fails instead of hanging.
pub async fn connect() -> Result<Cluster, Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| Error::NoCluster(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    let default_namespace = config.default_namespace.clone();
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| Error::NoCluster(e.to_string()))?;
    Ok(Cluster {
        client,
        default_namespace,
        server,
    })
}

/// Whether to use ANSI colors: stdout is a terminal and `NO_COLOR` is unset or empty.
pub fn color_from_env() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Terminal width: `COLUMNS`, else [`DEFAULT_WIDTH`].
pub fn width_from_env() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// The whole command: connect, fetch, and format as asked. Returns what to print.
pub async fn run(args: &StatusArgs, width: usize, color: bool) -> Result<String, Error> {
    let cluster = connect().await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
    let snapshot = fetch(&cluster.client, &namespace, args.policy.as_deref())
        .await
        .map_err(|e| match e {
            Error::Api {
                message,
                transport: true,
                ..
            } => Error::Unreachable {
                server: cluster.server.clone(),
                message,
            },
            other => other,
        })?;
    match args.output {
        OutputFormat::Table => Ok(render(&snapshot, width, color)),
        OutputFormat::Json => Ok(to_json(&snapshot)? + "\n"),
    }
}

/// The snapshot as pretty-printed JSON (the `-o json` output).
pub fn to_json(snapshot: &Snapshot) -> Result<String, Error> {
    Ok(serde_json::to_string_pretty(snapshot)?)
}

// ---------------------------------------------------------------------------------------------
// Fetch (the only I/O)

/// The objects [`build`] works from.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// RedisInstances of the namespace.
    pub instances: Vec<RedisInstance>,
    /// The CachePolicies shown (all of the namespace, or the one asked for).
    pub policies: Vec<CachePolicy>,
    /// Routing ConfigMaps by name; absent when not found, `Err` when unreadable.
    pub config_maps: BTreeMap<String, Result<ConfigMap, String>>,
}

fn api_error(what: &'static str, namespace: &str) -> impl Fn(kube::Error) -> Error {
    let namespace = namespace.to_owned();
    move |e| match e {
        kube::Error::Api(status) => Error::Api {
            what,
            namespace: namespace.clone(),
            message: if status.message.is_empty() {
                format!("HTTP {} {}", status.code, status.reason)
            } else {
                status.message.clone()
            },
            transport: false,
        },
        other => Error::Api {
            what,
            namespace: namespace.clone(),
            message: other.to_string(),
            transport: true,
        },
    }
}

/// Reads what a snapshot of `namespace` (or of one policy there) needs, and builds it.
pub async fn fetch(
    client: &Client,
    namespace: &str,
    policy: Option<&str>,
) -> Result<Snapshot, Error> {
    let instances_api: Api<RedisInstance> = Api::namespaced(client.clone(), namespace);
    let policies_api: Api<CachePolicy> = Api::namespaced(client.clone(), namespace);
    let config_maps_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default();

    let instances = match instances_api.list(&lp).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(Error::CrdsMissing),
        Err(e) => return Err(api_error("RedisInstances", namespace)(e)),
    };
    let policies = match policy {
        Some(name) => {
            let found = policies_api
                .get_opt(name)
                .await
                .map_err(api_error("CachePolicy", namespace))?;
            match found {
                Some(p) => vec![p],
                None => {
                    let available = policies_api
                        .list(&lp)
                        .await
                        .map_err(api_error("CachePolicies", namespace))?
                        .items
                        .iter()
                        .map(ResourceExt::name_any)
                        .collect();
                    return Err(Error::PolicyNotFound {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        available,
                    });
                }
            }
        }
        None => {
            policies_api
                .list(&lp)
                .await
                .map_err(api_error("CachePolicies", namespace))?
                .items
        }
    };
    let mut config_maps = BTreeMap::new();
    for p in &policies {
        let name = config_map_name(p);
        match config_maps_api.get_opt(&name).await {
            Ok(Some(cm)) => {
                config_maps.insert(name, Ok(cm));
            }
            Ok(None) => {}
            // Not fatal: a user may see policies without being allowed to read ConfigMaps.
            Err(e) => {
                let message = match api_error("ConfigMap", namespace)(e) {
                    Error::Api { message, .. } => message,
                    other => other.to_string(),
                };
                config_maps.insert(name, Err(message));
            }
        }
    }
    let objects = Objects {
        instances,
        policies,
        config_maps,
    };
    Ok(build(namespace, policy, &objects, Timestamp::now()))
}

// ---------------------------------------------------------------------------------------------
// Snapshot (the `-o json` document)

/// Everything `redis-fleet status` shows, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Format of this document; see [`SCHEMA_VERSION`].
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
    /// Categories in table order (spec order, the default category last).
    pub categories: Vec<CategorySnapshot>,
    /// Slots served by a fallback while their owner is unavailable.
    #[serde(default)]
    pub failovers: Vec<FailoverSnapshot>,
    /// Slot ranges in flight (from the routing table).
    #[serde(default)]
    pub migrating: Vec<Migration>,
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

// ---------------------------------------------------------------------------------------------
// Build (pure)

/// Builds the snapshot of `namespace` (or of the one policy asked for) from fetched objects.
pub fn build(namespace: &str, policy: Option<&str>, objects: &Objects, now: Timestamp) -> Snapshot {
    let mut instances: Vec<&RedisInstance> = objects.instances.iter().collect();
    instances.sort_by_key(|ri| ri.name_any());
    let mut policies: Vec<&CachePolicy> = objects
        .policies
        .iter()
        .filter(|p| policy.is_none_or(|name| p.name_any() == name))
        .collect();
    policies.sort_by_key(|p| p.name_any());

    let policy_snapshots = policies
        .iter()
        .map(|p| {
            let selected: Vec<&RedisInstance> = instances
                .iter()
                .copied()
                .filter(|ri| selects(p, ri))
                .collect();
            build_policy(p, &selected, objects.config_maps.get(&config_map_name(p)))
        })
        .collect();
    let unselected_instances = if policy.is_some() {
        Vec::new()
    } else {
        instances
            .iter()
            .filter(|ri| !policies.iter().any(|p| selects(p, ri)))
            .map(|ri| instance_snapshot(ri))
            .collect()
    };
    Snapshot {
        schema_version: SCHEMA_VERSION,
        namespace: namespace.to_owned(),
        policy: policy.map(str::to_owned),
        generated_at: now,
        policies: policy_snapshots,
        unselected_instances,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn conditions_of(conditions: &[Condition]) -> Vec<ConditionSnapshot> {
    conditions
        .iter()
        .map(|c| ConditionSnapshot {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            since: c.last_transition_time.0,
            healthy: is_healthy(&c.type_, &c.status),
        })
        .collect()
}

/// Whether a condition has its healthy value: `Degraded` is healthy when False,
/// `Rebalancing` is informational (the rebalance block shows it), the rest when True.
pub fn is_healthy(type_: &str, status: &str) -> bool {
    match type_ {
        "Degraded" => status == "False",
        "Rebalancing" => true,
        _ => status == "True",
    }
}

/// The snapshot of one instance.
pub fn instance_snapshot(ri: &RedisInstance) -> InstanceSnapshot {
    let status = ri.status.as_ref();
    let memory = status.and_then(|s| s.memory.as_ref());
    let capacity_bytes = memory
        .map(|m| m.capacity_bytes)
        .filter(|c| *c > 0)
        .map(|c| c as u64)
        .or_else(|| ri.spec.capacity.as_ref().map(|c| c.bytes()))
        .or_else(|| ri.spec.managed.as_ref().map(|m| m.max_memory.bytes()));
    let used_bytes = memory.map(|m| m.used_bytes.max(0) as u64);
    let used_percent = match (used_bytes, capacity_bytes) {
        (Some(u), Some(c)) if c > 0 => Some(round2(u as f64 * 100.0 / c as f64)),
        _ => None,
    };
    let stats = status.and_then(|s| s.stats.as_ref());
    InstanceSnapshot {
        name: ri.name_any(),
        tier: ri.labels().get(TIER_LABEL).cloned(),
        phase: status
            .and_then(|s| s.phase)
            .unwrap_or(InstancePhase::Pending),
        drain: ri.spec.drain,
        endpoint: status.and_then(|s| s.endpoint.clone()),
        used_bytes,
        capacity_bytes,
        used_percent,
        hit_percent: stats.and_then(|s| s.hit_percent),
        ops_per_second: stats.map(|s| s.ops_per_second),
        keys: status.and_then(|s| s.keys),
        latency: status.and_then(|s| s.latency.clone()),
        latency_micros: status.and_then(|s| s.latency_micros),
        last_probe_time: status.and_then(|s| s.last_probe_time.as_ref()).map(|t| t.0),
        conditions: status
            .map(|s| conditions_of(&s.conditions))
            .unwrap_or_default(),
    }
}

/// Each instance's share of a category's slots, from the table's `[start, end, instance]`
/// runs: most slots first, then by name.
pub fn slot_shares(runs: &[SlotOwner]) -> Vec<SlotShare> {
    let mut by_instance: BTreeMap<&str, u32> = BTreeMap::new();
    for run in runs {
        *by_instance.entry(run.instance.as_str()).or_default() += run.range.len();
    }
    let mut shares: Vec<SlotShare> = by_instance
        .into_iter()
        .map(|(instance, slots)| SlotShare {
            instance: instance.to_owned(),
            slots,
            percent: round2(f64::from(slots) * 100.0 / f64::from(SLOT_COUNT)),
        })
        .collect();
    shares.sort_by(|a, b| {
        b.slots
            .cmp(&a.slots)
            .then_with(|| a.instance.cmp(&b.instance))
    });
    shares
}

/// `(tier, fallbackTier, ttl)` of a category in the spec.
fn spec_category<'a>(
    spec: &'a CachePolicySpec,
    name: &str,
) -> Option<(Option<&'a String>, Option<&'a String>, Option<&'a TtlSpec>)> {
    if name == DEFAULT_CATEGORY {
        let d = &spec.default_category;
        return Some((d.tier.as_ref(), d.fallback_tier.as_ref(), d.ttl.as_ref()));
    }
    spec.categories
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c.tier.as_ref(), c.fallback_tier.as_ref(), c.ttl.as_ref()))
}

fn ttl_from_spec(ttl: &TtlSpec) -> TtlSnapshot {
    TtlSnapshot {
        default: ttl.default.as_ref().map(|d| d.as_str().to_owned()),
        max: ttl.max.as_ref().map(|d| d.as_str().to_owned()),
        adaptive: ttl.adaptive,
    }
}

fn ttl_from_table(ttl: &TtlRules) -> TtlSnapshot {
    TtlSnapshot {
        default: ttl.default_ms.map(format_ms),
        max: ttl.max_ms.map(format_ms),
        adaptive: ttl.adaptive,
    }
}

/// `3600000` → `1h`, `5400000` → `1h30m`, `1500` → `1500ms`.
fn format_ms(ms: u64) -> String {
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 || out.is_empty() {
        let _ = write!(out, "{s}s");
    }
    out
}

fn build_policy(
    policy: &CachePolicy,
    selected: &[&RedisInstance],
    config_map: Option<&Result<ConfigMap, String>>,
) -> PolicySnapshot {
    let status = policy.status.clone().unwrap_or_default();
    let spec = &policy.spec;
    let cm_name = config_map_name(policy);

    let (table, error, annotated) = match config_map {
        None => (
            None,
            Some(format!(
                "routing ConfigMap {cm_name} not found (not published yet?)"
            )),
            None,
        ),
        Some(Err(message)) => (
            None,
            Some(format!("routing ConfigMap {cm_name}: {message}")),
            None,
        ),
        Some(Ok(cm)) => {
            let annotated = annotated_version(cm);
            match table_of(cm) {
                None => (
                    None,
                    Some(format!("routing ConfigMap {cm_name} has no {TABLE_KEY}")),
                    annotated,
                ),
                Some(Ok(table)) => (Some(table), None, annotated),
                Some(Err(e)) => (
                    None,
                    Some(format!("routing ConfigMap {cm_name}: {e}")),
                    annotated,
                ),
            }
        }
    };
    let status_routing = status.routing.as_ref();
    let version = table
        .as_ref()
        .map(|t| t.version)
        .or(annotated)
        .or_else(|| status_routing.and_then(|r| u64::try_from(r.version).ok()));
    let same_version = status_routing
        .is_some_and(|r| version.is_some_and(|v| u64::try_from(r.version).ok() == Some(v)));
    let routing = RoutingSnapshot {
        config_map: cm_name,
        version,
        hash: status_routing
            .filter(|_| same_version)
            .map(|r| r.hash.clone()),
        published_at: status_routing
            .filter(|_| same_version)
            .and_then(|r| r.published_at.as_ref())
            .map(|t| t.0),
        error,
    };

    let sidecars = status.sidecars.as_ref().map(|s| SidecarsSnapshot {
        count: s.count,
        min_version: s.min_version,
        behind: matches!((s.min_version, version), (Some(min), Some(v)) if u64::try_from(min).map_or(true, |m| m < v)),
    });

    // Categories: the table's (what is routed), described with the spec's words.
    let categories = match &table {
        Some(t) => t
            .categories
            .iter()
            .map(|c| {
                let from_spec = spec_category(spec, &c.name);
                CategorySnapshot {
                    name: c.name.clone(),
                    prefixes: c.prefixes.clone(),
                    tier: from_spec.and_then(|s| s.0.cloned()),
                    fallback_tier: from_spec.and_then(|s| s.1.cloned()),
                    ttl: match from_spec {
                        Some((_, _, Some(ttl))) => ttl_from_spec(ttl),
                        Some((_, _, None)) => TtlSnapshot::default(),
                        None => ttl_from_table(&c.ttl),
                    },
                    placement: slot_shares(&c.slots),
                }
            })
            .collect(),
        None => spec
            .categories
            .iter()
            .map(|c| CategorySnapshot {
                name: c.name.clone(),
                prefixes: c.key_prefixes.clone(),
                tier: c.tier.clone(),
                fallback_tier: c.fallback_tier.clone(),
                ttl: c.ttl.as_ref().map(ttl_from_spec).unwrap_or_default(),
                placement: Vec::new(),
            })
            .chain(std::iter::once(CategorySnapshot {
                name: DEFAULT_CATEGORY.to_owned(),
                prefixes: Vec::new(),
                tier: spec.default_category.tier.clone(),
                fallback_tier: spec.default_category.fallback_tier.clone(),
                ttl: spec
                    .default_category
                    .ttl
                    .as_ref()
                    .map(ttl_from_spec)
                    .unwrap_or_default(),
                placement: Vec::new(),
            }))
            .collect(),
    };

    // Failovers: the table's ranges, grouped, with `since` from status.
    let since_of = |category: &str, from: &str, to: &str| {
        status
            .failovers
            .iter()
            .find(|f| f.category == category && f.from == from && f.to == to)
            .and_then(|f| f.since.as_ref())
            .map(|t| t.0)
    };
    let failovers = match &table {
        Some(t) => {
            let mut grouped: BTreeMap<(&str, &str, &str), u32> = BTreeMap::new();
            for f in &t.failover {
                *grouped
                    .entry((f.category.as_str(), f.from.as_str(), f.to.as_str()))
                    .or_default() += f.range().len();
            }
            // Table order of categories, not alphabetical.
            let order: BTreeMap<&str, usize> = t
                .categories
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.as_str(), i))
                .collect();
            let mut v: Vec<FailoverSnapshot> = grouped
                .into_iter()
                .map(|((category, from, to), slots)| FailoverSnapshot {
                    category: category.to_owned(),
                    from: from.to_owned(),
                    to: to.to_owned(),
                    slots,
                    since: since_of(category, from, to),
                })
                .collect();
            v.sort_by_key(|f| {
                order
                    .get(f.category.as_str())
                    .copied()
                    .unwrap_or(usize::MAX)
            });
            v
        }
        None => status
            .failovers
            .iter()
            .map(|f| FailoverSnapshot {
                category: f.category.clone(),
                from: f.from.clone(),
                to: f.to.clone(),
                slots: u32::try_from(f.slots).unwrap_or(0),
                since: f.since.as_ref().map(|t| t.0),
            })
            .collect(),
    };

    PolicySnapshot {
        name: policy.name_any(),
        ready: status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True"),
        strategy: spec.balancing.strategy,
        capacity_threshold: spec.balancing.capacity_threshold,
        routing,
        sidecars,
        instances: selected.iter().map(|ri| instance_snapshot(ri)).collect(),
        categories,
        failovers,
        migrating: table
            .as_ref()
            .map(|t| t.migrating.clone())
            .unwrap_or_default(),
        rebalance: status.rebalance.clone(),
        recommendations: status.recommendations.clone(),
        conditions: conditions_of(&status.conditions),
    }
}

// ---------------------------------------------------------------------------------------------
// Render (pure)

const BOLD: &str = "1";
const DIM: &str = "2";
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const CYAN: &str = "36";

/// Indentation of the blocks under a policy header.
const INDENT: usize = 2;
/// Width of the label column of the failover/rebalance/advice/conditions blocks.
const LABEL: usize = 12;

#[derive(Debug, Clone, Copy)]
struct Painter {
    color: bool,
}

impl Painter {
    fn paint(&self, text: &str, style: Option<&str>) -> String {
        match style {
            Some(code) if self.color && !text.is_empty() => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }
}

/// Display width: every glyph used here is one column wide.
fn cols(s: &str) -> usize {
    s.chars().count()
}

/// A table cell: painted text and the width of its plain text.
#[derive(Debug, Clone)]
struct Cell {
    text: String,
    width: usize,
    right: bool,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Cell {
        let text = text.into();
        Cell {
            width: cols(&text),
            text,
            right: false,
        }
    }

    fn styled(text: &str, style: Option<&str>, p: Painter) -> Cell {
        Cell {
            width: cols(text),
            text: p.paint(text, style),
            right: false,
        }
    }

    fn right(mut self) -> Cell {
        self.right = true;
        self
    }
}

/// Writes rows with columns aligned, two spaces apart, after `indent` spaces.
fn write_table(out: &mut String, rows: &[Vec<Cell>], indent: usize) {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; ncols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.width);
        }
    }
    for row in rows {
        let mut line = " ".repeat(indent);
        for (i, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.width);
            let last = i + 1 == row.len();
            if cell.right {
                line.push_str(&pad);
                line.push_str(&cell.text);
            } else {
                line.push_str(&cell.text);
                if !last {
                    line.push_str(&pad);
                }
            }
            if !last {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Greedy word wrap to `width` columns; a word longer than `width` gets a line of its own.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(10);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && cols(&line) + 1 + cols(word) > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// A labelled block: the label in a column of its own, each entry wrapped to the width left
/// (continuation lines indented two more); `paint(entry, line, text)` colors each line.
fn write_block(
    out: &mut String,
    label: &str,
    entries: &[String],
    width: usize,
    p: Painter,
    paint: impl Fn(usize, usize, &str) -> String,
) {
    let avail = width.saturating_sub(INDENT + LABEL + 2);
    let mut first = true;
    for (index, entry) in entries.iter().enumerate() {
        for (n, line) in wrap(&clean(entry), avail).into_iter().enumerate() {
            let head = if first {
                first = false;
                format!(
                    "{}{}",
                    p.paint(label, Some(DIM)),
                    " ".repeat(LABEL.saturating_sub(cols(label)))
                )
            } else {
                " ".repeat(LABEL)
            };
            let body = paint(index, n, &line);
            let indent = if n == 0 { "" } else { "  " };
            let _ = writeln!(out, "{}{head}{indent}{body}", " ".repeat(INDENT));
        }
    }
}

/// Text from the cluster (messages, advice) with control characters replaced, so that an
/// object's content cannot send escape sequences to the terminal.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `125 s` → `2m` (kubectl-style ages).
fn age(now: Timestamp, then: Timestamp) -> String {
    let secs = (now.as_second() - then.as_second()).max(0);
    human_secs(secs)
}

fn human_secs(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `81234` → `81,234`.
fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `10234` → `10.2k`.
fn compact(n: i64) -> String {
    let f = n as f64;
    match n.unsigned_abs() {
        a if a < 1_000 => n.to_string(),
        a if a < 999_950 => format!("{:.1}k", f / 1e3),
        a if a < 999_950_000 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.1}G", f / 1e9),
    }
}

/// A slot share for humans: `100%`, `50%`, `<1%`, `>99%`.
fn share(percent: f64) -> String {
    if percent > 0.0 && percent < 1.0 {
        "<1%".to_owned()
    } else if (99.5..100.0).contains(&percent) {
        ">99%".to_owned()
    } else {
        format!("{percent:.0}%")
    }
}

/// Color of a usage level against the threshold.
fn level(percent: f64, threshold: Option<i32>) -> &'static str {
    let t = f64::from(threshold.unwrap_or(100));
    if percent >= t {
        RED
    } else if percent >= t - 10.0 {
        YELLOW
    } else {
        GREEN
    }
}

fn phase_style(phase: InstancePhase) -> &'static str {
    match phase {
        InstancePhase::Ready => GREEN,
        InstancePhase::Degraded | InstancePhase::Draining => YELLOW,
        InstancePhase::Unreachable => RED,
        InstancePhase::Pending => CYAN,
    }
}

/// `[██████████░░░░░│░░░]`: `cells` cells filled to `percent`, with `│` at the threshold.
fn usage_bar(percent: f64, threshold: Option<i32>, cells: usize, p: Painter) -> Cell {
    let cells = cells.max(1);
    let filled = ((percent / 100.0 * cells as f64).round() as usize).min(cells);
    let marker =
        threshold.map(|t| ((f64::from(t) / 100.0 * cells as f64).floor() as usize).min(cells - 1));
    let style = level(percent, threshold);
    let mut text = String::from("[");
    let mut run = String::new();
    let mut run_style = None;
    let flush = |text: &mut String, run: &mut String, style: Option<&str>| {
        text.push_str(&p.paint(run, style));
        run.clear();
    };
    for i in 0..cells {
        let (glyph, s) = if Some(i) == marker {
            ('│', None)
        } else if i < filled {
            ('█', Some(style))
        } else {
            ('░', Some(DIM))
        };
        if s != run_style {
            flush(&mut text, &mut run, run_style);
            run_style = s;
        }
        run.push(glyph);
    }
    flush(&mut text, &mut run, run_style);
    text.push(']');
    Cell {
        text,
        width: cells + 2,
        right: false,
    }
}

/// `[   no capacity   ]`: the bar's place when there is nothing to measure against.
fn placeholder_bar(label: &str, cells: usize, p: Painter) -> Cell {
    let cells = cells.max(cols(label));
    let left = (cells - cols(label)) / 2;
    let inner = format!(
        "{}{label}{}",
        " ".repeat(left),
        " ".repeat(cells - cols(label) - left)
    );
    Cell {
        text: format!("[{}]", p.paint(&inner, Some(DIM))),
        width: cells + 2,
        right: false,
    }
}

/// Draws the snapshot for a terminal `width` columns wide; ANSI colors when `color`.
pub fn render(snapshot: &Snapshot, width: usize, color: bool) -> String {
    let p = Painter { color };
    let width = width.max(60);
    let now = snapshot.generated_at;
    let mut out = String::new();

    let mut names: BTreeSet<&str> = BTreeSet::new();
    for policy in &snapshot.policies {
        names.extend(policy.instances.iter().map(|i| i.name.as_str()));
    }
    names.extend(
        snapshot
            .unselected_instances
            .iter()
            .map(|i| i.name.as_str()),
    );
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let _ = writeln!(
        out,
        "{} {} · {} · {}",
        p.paint("namespace", Some(DIM)),
        p.paint(&snapshot.namespace, Some(BOLD)),
        plural(snapshot.policies.len(), "policy", "policies"),
        plural(names.len(), "instance", "instances"),
    );
    if snapshot.policies.is_empty() && snapshot.unselected_instances.is_empty() {
        let _ = writeln!(
            out,
            "\nNo CachePolicy and no RedisInstance in namespace {}.",
            snapshot.namespace
        );
        return out;
    }

    for policy in &snapshot.policies {
        out.push('\n');
        render_policy(&mut out, policy, now, width, p);
    }

    if !snapshot.unselected_instances.is_empty() {
        out.push('\n');
        let _ = writeln!(
            out,
            "{}",
            p.paint("Instances no policy selects", Some(BOLD))
        );
        write_instances(&mut out, &snapshot.unselected_instances, None, width, p);
        let entries: Vec<(String, String)> =
            instance_condition_entries(&snapshot.unselected_instances, now);
        if !entries.is_empty() {
            out.push('\n');
            write_conditions(&mut out, &entries, width, p);
        }
    }
    out
}

fn render_policy(
    out: &mut String,
    policy: &PolicySnapshot,
    now: Timestamp,
    width: usize,
    p: Painter,
) {
    // Header: name, Ready, routing version, ConfigMap, strategy, threshold, sidecars.
    let mut parts: Vec<(String, Option<&str>)> = Vec::new();
    parts.push(match policy.ready {
        Some(true) => ("Ready".to_owned(), Some(GREEN)),
        Some(false) => ("Not ready".to_owned(), Some(RED)),
        None => ("not reconciled yet".to_owned(), Some(YELLOW)),
    });
    let routing = &policy.routing;
    parts.push(match routing.version {
        Some(v) => (
            match routing.published_at {
                Some(at) => format!("routing v{v} ({} ago)", age(now, at)),
                None => format!("routing v{v}"),
            },
            None,
        ),
        None => ("no routing table".to_owned(), Some(RED)),
    });
    parts.push((format!("ConfigMap {}", routing.config_map), None));
    parts.push((policy.strategy.as_str().to_owned(), None));
    parts.push((format!("threshold {}%", policy.capacity_threshold), None));
    parts.push(match &policy.sidecars {
        None => ("no sidecars".to_owned(), Some(DIM)),
        Some(s) if s.count == 0 => ("0 sidecars".to_owned(), Some(DIM)),
        Some(s) => {
            let count = if s.count == 1 {
                "1 sidecar".to_owned()
            } else {
                format!("{} sidecars", s.count)
            };
            match (s.min_version, s.behind) {
                (Some(min), true) => (
                    format!(
                        "{count}, oldest on v{min} — behind v{}",
                        routing.version.unwrap_or_default()
                    ),
                    Some(YELLOW),
                ),
                (Some(min), false) => (format!("{count} on v{min}"), None),
                (None, _) => (count, None),
            }
        }
    });
    let mut line = p.paint(&policy.name, Some(BOLD));
    let mut line_width = cols(&policy.name);
    let sep = " · ";
    for (i, (text, style)) in parts.iter().enumerate() {
        let glue = if i == 0 { "  " } else { sep };
        if line_width + cols(glue) + cols(text) > width && i > 0 {
            let _ = writeln!(out, "{line}");
            line = " ".repeat(cols(&policy.name) + 2);
            line_width = cols(&line);
        } else {
            line.push_str(glue);
            line_width += cols(glue);
        }
        line.push_str(&p.paint(text, *style));
        line_width += cols(text);
    }
    let _ = writeln!(out, "{line}");

    // Instances.
    if policy.instances.is_empty() {
        let _ = writeln!(
            out,
            "{}{}",
            " ".repeat(INDENT),
            p.paint("no RedisInstance is selected by this policy", Some(YELLOW))
        );
    } else {
        write_instances(
            out,
            &policy.instances,
            Some(policy.capacity_threshold),
            width,
            p,
        );
    }

    // Categories.
    if !policy.categories.is_empty() {
        out.push('\n');
        let phase_of = |name: &str| {
            policy
                .instances
                .iter()
                .find(|i| i.name == name)
                .map(|i| i.phase)
        };
        let mut rows = vec![
            ["CATEGORY", "PREFIXES", "TIER", "TTL", "SLOTS ON"]
                .iter()
                .map(|h| Cell::styled(h, Some(DIM), p))
                .collect::<Vec<_>>(),
        ];
        for c in &policy.categories {
            let prefixes = if c.prefixes.is_empty() {
                Cell::styled("(other keys)", Some(DIM), p)
            } else {
                Cell::plain(clean(&c.prefixes.join(" ")))
            };
            let placement = if c.placement.is_empty() {
                Cell::styled("not published", Some(RED), p)
            } else {
                let plain: Vec<String> = c
                    .placement
                    .iter()
                    .map(|s| format!("{} {}", s.instance, share(s.percent)))
                    .collect();
                let painted: Vec<String> = c
                    .placement
                    .iter()
                    .map(|s| {
                        let style = match phase_of(&s.instance) {
                            Some(InstancePhase::Unreachable) | None => Some(RED),
                            _ => None,
                        };
                        format!("{} {}", p.paint(&s.instance, style), share(s.percent))
                    })
                    .collect();
                let plain = plain.join(" · ");
                Cell {
                    width: cols(&plain),
                    text: painted.join(" · "),
                    right: false,
                }
            };
            rows.push(vec![
                Cell::styled(&c.name, Some(BOLD), p),
                prefixes,
                Cell::plain(c.tier.clone().unwrap_or_else(|| "any".to_owned())),
                Cell::plain(ttl_text(&c.ttl)),
                placement,
            ]);
        }
        write_table(out, &rows, INDENT);
    }

    // Failovers and migrations.
    let failovers: Vec<String> = policy
        .failovers
        .iter()
        .map(|f| {
            let state = match policy.instances.iter().find(|i| i.name == f.from) {
                Some(i) => i.phase.as_str().to_lowercase(),
                None => "gone".to_owned(),
            };
            let since = f
                .since
                .map(|s| format!(" since {}", age(now, s)))
                .unwrap_or_default();
            let part = if u32::from(SLOT_COUNT) == f.slots {
                String::new()
            } else {
                format!(", {} slots", f.slots)
            };
            format!(
                "{} → {} ({} {state}{since}{part})",
                f.category, f.to, f.from
            )
        })
        .collect();
    if !failovers.is_empty() {
        out.push('\n');
        write_block(out, "failover", &failovers, width, p, |_, _, l| {
            p.paint(l, Some(YELLOW))
        });
    }
    let migrating: Vec<String> = policy
        .migrating
        .iter()
        .map(|m| {
            format!(
                "{} slots {}-{} {} → {} (since v{})",
                m.category, m.start, m.end, m.from, m.to, m.epoch
            )
        })
        .collect();
    if !migrating.is_empty() {
        if failovers.is_empty() {
            out.push('\n');
        }
        write_block(out, "migrating", &migrating, width, p, |_, _, l| {
            p.paint(l, Some(CYAN))
        });
    }

    // Rebalance.
    if let Some(r) = &policy.rebalance {
        out.push('\n');
        write_rebalance(out, r, now, width, p);
    }

    // Advice.
    if !policy.recommendations.is_empty() {
        out.push('\n');
        write_block(
            out,
            "advice",
            &policy.recommendations,
            width,
            p,
            |_, _, l| l.to_owned(),
        );
    }

    // Conditions that are not healthy: the policy's, then its instances'.
    let mut entries: Vec<(String, String)> = Vec::new();
    if let Some(e) = &routing.error {
        entries.push(("routing:".to_owned(), e.clone()));
    }
    for c in policy.conditions.iter().filter(|c| !c.healthy) {
        entries.push(condition_entry(None, c, now));
    }
    entries.extend(instance_condition_entries(&policy.instances, now));
    if !entries.is_empty() {
        out.push('\n');
        write_conditions(out, &entries, width, p);
    }
}

fn ttl_text(ttl: &TtlSnapshot) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &ttl.default {
        parts.push(d.clone());
    }
    if let Some(m) = &ttl.max {
        parts.push(format!("max {m}"));
    }
    if ttl.adaptive {
        parts.push("adaptive".to_owned());
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn write_instances(
    out: &mut String,
    instances: &[InstanceSnapshot],
    threshold: Option<i32>,
    width: usize,
    p: Painter,
) {
    struct Row<'a> {
        instance: &'a InstanceSnapshot,
        usage: String,
        hit: String,
        latency: String,
        keys: String,
    }
    let rows: Vec<Row<'_>> = instances
        .iter()
        .map(|i| {
            let usage = match (i.used_percent, i.capacity_bytes, i.used_bytes) {
                (Some(pct), Some(cap), _) => {
                    format!("{:>4} of {}", format!("{pct:.0}%"), format_bytes_human(cap))
                }
                (None, Some(cap), _) => format!("   — of {}", format_bytes_human(cap)),
                (None, None, Some(used)) => format!("{} used", format_bytes_human(used)),
                _ => "—".to_owned(),
            };
            let live = !matches!(i.phase, InstancePhase::Unreachable | InstancePhase::Pending);
            Row {
                instance: i,
                usage,
                hit: i
                    .hit_percent
                    .filter(|_| live)
                    .map_or_else(|| "—".to_owned(), |h| format!("{h}%")),
                latency: i
                    .latency
                    .clone()
                    .filter(|_| live)
                    .unwrap_or_else(|| "—".to_owned()),
                keys: i.keys.map_or_else(|| "—".to_owned(), compact),
            }
        })
        .collect();
    let headers = [
        "INSTANCE", "TIER", "PHASE", "MEMORY", "", "HIT", "LATENCY", "KEYS",
    ];
    let max = |f: &dyn Fn(&Row<'_>) -> usize, header: &str| {
        rows.iter().map(f).max().unwrap_or(0).max(cols(header))
    };
    let fixed = max(&|r| cols(&r.instance.name), headers[0])
        + max(&|r| r.instance.tier.as_deref().map_or(1, cols), headers[1])
        + max(&|r| cols(r.instance.phase.as_str()), headers[2])
        + max(&|r| cols(&r.usage), headers[4])
        + max(&|r| cols(&r.hit), headers[5])
        + max(&|r| cols(&r.latency), headers[6])
        + max(&|r| cols(&r.keys), headers[7]);
    // Eight columns, seven gaps of two, the bar's two brackets.
    let cells = width
        .saturating_sub(INDENT + fixed + 7 * 2 + 2)
        .clamp(10, 40);

    let mut table = vec![
        headers
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let c = Cell::styled(h, Some(DIM), p);
                if matches!(n, 5 | 7) { c.right() } else { c }
            })
            .collect::<Vec<_>>(),
    ];
    for r in &rows {
        let i = r.instance;
        let bar = match (i.used_percent, i.capacity_bytes) {
            (Some(pct), Some(_)) => usage_bar(pct, threshold, cells, p),
            (None, Some(_)) => usage_bar(0.0, threshold, cells, p),
            _ => placeholder_bar("no capacity", cells, p),
        };
        let usage_style = i
            .used_percent
            .map(|pct| level(pct, threshold))
            .filter(|s| *s == RED);
        let phase = if i.drain && i.phase != InstancePhase::Draining {
            format!("{} (drain)", i.phase)
        } else {
            i.phase.to_string()
        };
        table.push(vec![
            Cell::styled(&i.name, Some(BOLD), p),
            Cell::plain(i.tier.clone().unwrap_or_else(|| "—".to_owned())),
            Cell::styled(&phase, Some(phase_style(i.phase)), p),
            bar,
            Cell::styled(&r.usage, usage_style, p),
            Cell::plain(r.hit.clone()).right(),
            Cell::plain(r.latency.clone()),
            Cell::plain(r.keys.clone()).right(),
        ]);
    }
    write_table(out, &table, INDENT);
}

fn write_rebalance(
    out: &mut String,
    r: &RebalanceStatus,
    now: Timestamp,
    width: usize,
    p: Painter,
) {
    let phase_style = match r.phase.as_str() {
        "Succeeded" => GREEN,
        "Failed" => RED,
        _ => CYAN,
    };
    let mut first = vec![match r.step.as_deref() {
        Some(step) if !matches!(r.phase.as_str(), "Succeeded" | "Failed") => {
            format!("{} ({step})", r.phase)
        }
        _ => r.phase.clone(),
    }];
    if let Some(job) = &r.job {
        first.push(format!("job {job}"));
    }
    if r.attempts > 1 {
        first.push(format!("attempt {}", r.attempts));
    }
    match (&r.finished_at, &r.started_at) {
        (Some(f), _) => first.push(format!("finished {} ago", age(now, f.0))),
        (None, Some(s)) => first.push(format!("started {} ago", age(now, s.0))),
        (None, None) => {}
    }
    let mut entries = vec![first.join(" · ")];
    if let Some(reason) = &r.reason {
        entries.push(reason.clone());
    }
    if !r.moves.is_empty() {
        const SHOWN: usize = 4;
        let mut moves: Vec<String> = r
            .moves
            .iter()
            .take(SHOWN)
            .map(|m| format!("{} {}-{} {} → {}", m.category, m.start, m.end, m.from, m.to))
            .collect();
        if r.moves.len() > SHOWN {
            moves.push(format!("and {} more", r.moves.len() - SHOWN));
        }
        entries.push(format!("moves: {}", moves.join("; ")));
    }
    let avail = width.saturating_sub(INDENT + LABEL);
    let (keys_moved, keys_total, keys_per_second) = (
        r.keys_moved.unwrap_or(0),
        r.keys_total.unwrap_or(0),
        r.keys_per_second.unwrap_or(0),
    );
    let progress = if keys_total > 0 || keys_moved > 0 {
        let total = keys_total.max(keys_moved);
        let pct = if total > 0 {
            keys_moved as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let mut text = format!("{} / {} keys  {pct:.0}%", group(keys_moved), group(total));
        if keys_per_second > 0 {
            let _ = write!(text, " · {} keys/s", group(keys_per_second));
            let left = total - keys_moved;
            if left > 0 && r.finished_at.is_none() {
                let secs = (left + keys_per_second - 1) / keys_per_second;
                let _ = write!(text, " · ~{} left", human_secs(secs));
            }
        }
        let cells = avail.saturating_sub(cols(&text) + 4).clamp(10, 30);
        Some((progress_bar(pct, cells, p), text))
    } else {
        None
    };
    write_block(out, "rebalance", &entries, width, p, |index, n, l| {
        if index == 0 && n == 0 {
            l.replacen(&r.phase, &p.paint(&r.phase, Some(phase_style)), 1)
        } else {
            l.to_owned()
        }
    });
    let pad = " ".repeat(INDENT + LABEL);
    if let Some((bar, text)) = progress {
        let _ = writeln!(out, "{pad}{}  {text}", bar.text);
    }
    if let Some(m) = &r.message {
        for line in wrap(&clean(&format!("error: {m}")), avail) {
            let _ = writeln!(out, "{pad}{}", p.paint(&line, Some(RED)));
        }
    }
}

fn progress_bar(percent: f64, cells: usize, p: Painter) -> Cell {
    let filled = ((percent / 100.0 * cells as f64).round() as usize).min(cells);
    Cell {
        text: format!(
            "[{}{}]",
            p.paint(&"█".repeat(filled), Some(CYAN)),
            p.paint(&"░".repeat(cells - filled), Some(DIM))
        ),
        width: cells + 2,
        right: false,
    }
}

/// `(who, text)` where `text` starts with `Type=Status`.
fn condition_entry(who: Option<&str>, c: &ConditionSnapshot, now: Timestamp) -> (String, String) {
    let mut text = format!("{}={}", c.type_, c.status);
    if !c.reason.is_empty() {
        let _ = write!(text, " {}", c.reason);
    }
    if !c.message.is_empty() {
        let _ = write!(text, ": {}", c.message);
    }
    let _ = write!(text, " ({})", age(now, c.since));
    (who.map(|w| format!("{w}:")).unwrap_or_default(), text)
}

fn instance_condition_entries(
    instances: &[InstanceSnapshot],
    now: Timestamp,
) -> Vec<(String, String)> {
    instances
        .iter()
        .flat_map(|i| {
            i.conditions
                .iter()
                .filter(|c| !c.healthy)
                // Ready=False only repeats the cause of another condition when there is one.
                .filter(|c| {
                    c.type_ != "Ready"
                        || i.conditions.iter().all(|o| o.healthy || o.type_ == "Ready")
                })
                .map(move |c| condition_entry(Some(&i.name), c, now))
        })
        .collect()
}

fn write_conditions(out: &mut String, entries: &[(String, String)], width: usize, p: Painter) {
    let lines: Vec<String> = entries
        .iter()
        .map(|(who, text)| {
            if who.is_empty() {
                text.clone()
            } else {
                format!("{who} {text}")
            }
        })
        .collect();
    write_block(out, "conditions", &lines, width, p, |index, n, l| {
        let (who, text) = &entries[index];
        if n > 0 {
            return l.to_owned();
        }
        let token = text.split_whitespace().next().unwrap_or_default();
        let style = if token.ends_with("=Unknown") {
            YELLOW
        } else {
            RED
        };
        let l = if who.is_empty() {
            l.to_owned()
        } else {
            l.replacen(who.as_str(), &p.paint(who, Some(BOLD)), 1)
        };
        if who == "routing:" {
            return p.paint(&l, Some(RED));
        }
        l.replacen(token, &p.paint(token, Some(style)), 1)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cache_policy::MoveStatus;
    use crate::api::conditions::Time;
    use crate::routing::table::{
        Category, Failover, InstanceEndpoint, RoutingTable, VERSION_ANNOTATION,
    };
    use serde_json::json;

    const MIB: u64 = 1 << 20;
    /// "Now" in every test: 2025-06-01T12:00:00Z.
    const NOW: i64 = 1_748_779_200;

    fn at(secs_before_now: i64) -> Timestamp {
        Timestamp::from_second(NOW - secs_before_now).unwrap()
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str, ago: i64) -> ConditionSnapshot {
        ConditionSnapshot {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            since: at(ago),
            healthy: is_healthy(type_, status),
        }
    }

    fn instance(name: &str, tier: &str, phase: InstancePhase, used_mib: f64) -> InstanceSnapshot {
        let used = (used_mib * MIB as f64) as u64;
        InstanceSnapshot {
            name: name.into(),
            tier: Some(tier.into()),
            phase,
            drain: false,
            endpoint: Some("127.0.0.1:7001".into()),
            used_bytes: Some(used),
            capacity_bytes: Some(30 * MIB),
            used_percent: Some(round2(used as f64 * 100.0 / (30 * MIB) as f64)),
            hit_percent: Some(93),
            ops_per_second: Some(850),
            keys: Some(10_234),
            latency: Some("420µs".into()),
            latency_micros: Some(420),
            last_probe_time: Some(at(1)),
            conditions: vec![
                cond("Reachable", "True", "Pong", "", 3600),
                cond("Ready", "True", "Serving", "", 3600),
            ],
        }
    }

    fn category(
        name: &str,
        prefixes: &[&str],
        tier: &str,
        ttl: (&str, &str, bool),
        on: &[(&str, u32)],
    ) -> CategorySnapshot {
        CategorySnapshot {
            name: name.into(),
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            tier: Some(tier.into()),
            fallback_tier: None,
            ttl: TtlSnapshot {
                default: Some(ttl.0.into()).filter(|s: &String| !s.is_empty()),
                max: Some(ttl.1.into()).filter(|s: &String| !s.is_empty()),
                adaptive: ttl.2,
            },
            placement: on
                .iter()
                .map(|(i, slots)| SlotShare {
                    instance: (*i).into(),
                    slots: *slots,
                    percent: round2(f64::from(*slots) * 100.0 / 16384.0),
                })
                .collect(),
        }
    }

    /// The user's fleet, healthy: primary (hot) at 52 %, secondary (warm) at 20 %.
    fn healthy() -> Snapshot {
        Snapshot {
            schema_version: SCHEMA_VERSION,
            namespace: "shop".into(),
            policy: None,
            generated_at: at(0),
            policies: vec![PolicySnapshot {
                name: "shop".into(),
                ready: Some(true),
                strategy: Strategy::Smart,
                capacity_threshold: 80,
                routing: RoutingSnapshot {
                    config_map: "shop-redis-routing".into(),
                    version: Some(17),
                    hash: Some("0123456789abcdef".into()),
                    published_at: Some(at(125)),
                    error: None,
                },
                sidecars: Some(SidecarsSnapshot {
                    count: 12,
                    min_version: Some(17),
                    behind: false,
                }),
                instances: vec![
                    instance("primary", "hot", InstancePhase::Ready, 15.6),
                    instance("secondary", "warm", InstancePhase::Ready, 6.0),
                ],
                categories: vec![
                    category(
                        "auth",
                        &["auth:", "session:"],
                        "hot",
                        ("1h", "24h", true),
                        &[("primary", 16384)],
                    ),
                    category(
                        "menu",
                        &["menu:", "restaurant:"],
                        "warm",
                        ("6h", "24h", false),
                        &[("secondary", 16384)],
                    ),
                    category(
                        "default",
                        &[],
                        "warm",
                        ("1h", "", false),
                        &[("secondary", 16384)],
                    ),
                ],
                failovers: vec![],
                migrating: vec![],
                rebalance: None,
                recommendations: vec![],
                conditions: vec![
                    cond("RoutingPublished", "True", "Published", "version 17", 125),
                    cond("Degraded", "False", "AllServed", "", 3600),
                    cond("Ready", "True", "Serving", "", 3600),
                ],
            }],
            unselected_instances: vec![],
        }
    }

    fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
    }

    fn words(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn the_bar_marks_the_threshold() {
        let p = Painter { color: false };
        assert_eq!(
            usage_bar(52.0, Some(80), 19, p).text,
            "[██████████░░░░░│░░░]"
        );
        assert_eq!(usage_bar(0.0, Some(80), 10, p).text, "[░░░░░░░░│░]");
        assert_eq!(usage_bar(95.0, Some(80), 10, p).text, "[████████│█]");
        assert_eq!(usage_bar(130.0, Some(100), 10, p).text, "[█████████│]");
        assert_eq!(usage_bar(50.0, None, 10, p).text, "[█████░░░░░]");
        assert_eq!(usage_bar(52.0, Some(80), 19, p).width, 21);
    }

    #[test]
    fn renders_a_healthy_two_instance_fleet() {
        let text = render(&healthy(), 100, false);
        println!("{text}");
        assert!(!text.contains('\x1b'), "no color when asked for none");
        assert!(
            text.lines().all(|l| cols(l) <= 100),
            "fits 100 columns\n{text}"
        );
        assert_eq!(
            text.lines().next(),
            Some("namespace shop · 1 policy · 2 instances")
        );
        let header = line_with(&text, "ConfigMap");
        assert!(
            header.starts_with("shop  Ready · routing v17 (2m ago) · ConfigMap shop-redis-routing"),
            "{header}"
        );
        let rest = line_with(&text, "threshold");
        assert!(rest.contains("Smart · threshold 80%"), "{rest}");
        assert!(text.contains("12 sidecars on v17"), "{text}");

        assert_eq!(
            words(line_with(&text, "INSTANCE")),
            [
                "INSTANCE", "TIER", "PHASE", "MEMORY", "HIT", "LATENCY", "KEYS"
            ]
        );
        let primary = line_with(&text, "  primary ");
        let w = words(primary);
        assert_eq!(&w[..3], ["primary", "hot", "Ready"], "{primary}");
        assert!(
            w[3].starts_with('[') && w[3].ends_with(']') && w[3].contains('│'),
            "{primary}"
        );
        assert_eq!(
            &w[4..],
            ["52%", "of", "30.0Mi", "93%", "420µs", "10.2k"],
            "{primary}"
        );
        let bar = w[3];
        let filled = bar.matches('█').count();
        let cells = cols(bar) - 2;
        assert!(
            (cells * 52 / 100).abs_diff(filled) <= 1,
            "{bar}: 52% filled"
        );
        assert_eq!(
            bar.find('│').map(|i| cols(&bar[..i]) - 1),
            Some(cells * 80 / 100),
            "{bar}"
        );
        let secondary = words(line_with(&text, "  secondary "));
        assert_eq!(&secondary[4..7], ["20%", "of", "30.0Mi"]);

        assert_eq!(
            words(line_with(&text, "CATEGORY")),
            ["CATEGORY", "PREFIXES", "TIER", "TTL", "SLOTS", "ON"]
        );
        assert_eq!(
            words(line_with(&text, "  auth ")),
            [
                "auth", "auth:", "session:", "hot", "1h,", "max", "24h,", "adaptive", "primary",
                "100%"
            ]
        );
        assert_eq!(
            words(line_with(&text, "  menu ")),
            [
                "menu",
                "menu:",
                "restaurant:",
                "warm",
                "6h,",
                "max",
                "24h",
                "secondary",
                "100%"
            ]
        );
        assert_eq!(
            words(line_with(&text, "  default ")),
            [
                "default",
                "(other",
                "keys)",
                "warm",
                "1h",
                "secondary",
                "100%"
            ]
        );
        for absent in ["failover", "rebalance", "conditions", "advice", "behind"] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn renders_an_unreachable_instance_and_its_failovers() {
        let mut s = healthy();
        let policy = &mut s.policies[0];
        policy.ready = Some(true);
        let primary = &mut policy.instances[0];
        primary.phase = InstancePhase::Unreachable;
        primary.conditions = vec![
            cond(
                "Reachable",
                "False",
                "ConnectionRefused",
                "connection refused",
                130,
            ),
            cond("Ready", "False", "ConnectionRefused", "unreachable", 130),
        ];
        policy.categories[0].placement = vec![SlotShare {
            instance: "primary".into(),
            slots: 16384,
            percent: 100.0,
        }];
        policy.failovers = vec![
            FailoverSnapshot {
                category: "auth".into(),
                from: "primary".into(),
                to: "secondary".into(),
                slots: 16384,
                since: Some(at(125)),
            },
            FailoverSnapshot {
                category: "order".into(),
                from: "primary".into(),
                to: "secondary".into(),
                slots: 4096,
                since: None,
            },
        ];
        policy.conditions[1] = cond(
            "Degraded",
            "True",
            "FailedOver",
            "served by a fallback: auth from primary to secondary",
            125,
        );
        let text = render(&s, 100, false);
        println!("{text}");
        assert!(
            text.lines().all(|l| cols(l) <= 100),
            "fits 100 columns\n{text}"
        );
        let primary = words(line_with(&text, "  primary "));
        assert_eq!(&primary[..3], ["primary", "hot", "Unreachable"]);
        assert_eq!(
            &primary[primary.len() - 3..],
            ["—", "—", "10.2k"],
            "no live hit or latency"
        );
        assert_eq!(
            line_with(&text, "failover").trim(),
            "failover    auth → secondary (primary unreachable since 2m)"
        );
        assert!(
            text.contains("order → secondary (primary unreachable, 4096 slots)"),
            "{text}"
        );
        assert!(
            line_with(&text, "conditions").contains(
                "Degraded=True FailedOver: served by a fallback: auth from primary to secondary (2m)"
            ),
            "{text}"
        );
        assert!(
            text.contains("primary: Reachable=False ConnectionRefused: connection refused (2m)"),
            "{text}"
        );
        assert!(
            !text.contains("primary: Ready=False"),
            "Ready=False repeats the cause already shown\n{text}"
        );
    }

    #[test]
    fn renders_a_rebalance_in_progress_and_sidecars_behind() {
        let mut s = healthy();
        let policy = &mut s.policies[0];
        policy.instances[0].used_percent = Some(86.0);
        policy.sidecars = Some(SidecarsSnapshot {
            count: 12,
            min_version: Some(16),
            behind: true,
        });
        policy.migrating = vec![Migration {
            category: "auth".into(),
            start: 0,
            end: 4095,
            from: "primary".into(),
            to: "secondary".into(),
            epoch: 17,
        }];
        policy.rebalance = Some(RebalanceStatus {
            phase: "Migrating".into(),
            job: Some("shop-rebalance-17".into()),
            reason: Some("primary is at 86% of 30Mi, over the 80% threshold".into()),
            moves: vec![MoveStatus {
                category: "auth".into(),
                start: 0,
                end: 4095,
                from: "primary".into(),
                to: "secondary".into(),
            }],
            keys_moved: Some(81_234),
            keys_total: Some(120_000),
            keys_per_second: Some(12_000),
            attempts: 1,
            started_at: Some(Time(at(190))),
            step: Some("Copying".into()),
            ..RebalanceStatus::default()
        });
        policy.recommendations = vec![
            "primary is at 86% of 30Mi and grows ~2Mi/day: add an instance or raise capacity"
                .into(),
        ];
        let text = render(&s, 100, false);
        println!("{text}");
        assert!(
            text.lines().all(|l| cols(l) <= 100),
            "fits 100 columns\n{text}"
        );
        assert!(
            text.contains("12 sidecars, oldest on v16 — behind v17"),
            "{text}"
        );
        assert!(words(line_with(&text, "  primary ")).contains(&"86%"));
        assert_eq!(
            line_with(&text, "migrating").trim(),
            "migrating   auth slots 0-4095 primary → secondary (since v17)"
        );
        assert_eq!(
            line_with(&text, "rebalance").trim(),
            "rebalance   Migrating (Copying) · job shop-rebalance-17 · started 3m ago"
        );
        assert!(text.contains("primary is at 86% of 30Mi, over the 80% threshold"));
        assert!(text.contains("moves: auth 0-4095 primary → secondary"));
        let progress = line_with(&text, "keys/s");
        assert!(
            progress.ends_with("]  81,234 / 120,000 keys  68% · 12,000 keys/s · ~4s left"),
            "{progress}"
        );
        assert!(progress.trim_start().starts_with("[███"), "{progress}");
        assert!(line_with(&text, "advice").contains("primary is at 86% of 30Mi"));
    }

    #[test]
    fn renders_an_instance_without_capacity_among_the_unselected() {
        let mut s = healthy();
        let mut legacy = instance("legacy", "", InstancePhase::Degraded, 12.0);
        legacy.tier = None;
        legacy.capacity_bytes = None;
        legacy.used_percent = None;
        legacy.conditions = vec![cond(
            "WithinCapacity",
            "Unknown",
            "NoCapacity",
            "maxmemory is 0 and spec.capacity is not set",
            60,
        )];
        s.unselected_instances = vec![legacy];
        let text = render(&s, 100, false);
        println!("{text}");
        assert!(text.starts_with("namespace shop · 1 policy · 3 instances\n"));
        let block = text.split("Instances no policy selects\n").nth(1).unwrap();
        let legacy = line_with(block, "  legacy ");
        assert_eq!(&words(legacy)[..3], ["legacy", "—", "Degraded"]);
        let (bar, usage) = legacy.split_once(']').unwrap();
        assert_eq!(
            bar.split_once('[').unwrap().1.trim(),
            "no capacity",
            "{legacy}"
        );
        assert!(usage.starts_with("  12.0Mi used  93%"), "{legacy}");
        assert!(
            block.contains("legacy: WithinCapacity=Unknown NoCapacity: maxmemory is 0"),
            "{block}"
        );
    }

    #[test]
    fn color_changes_nothing_but_escapes() {
        let mut s = healthy();
        s.policies[0].instances[0].phase = InstancePhase::Unreachable;
        s.policies[0].instances[0].conditions =
            vec![cond("Reachable", "False", "Timeout", "no answer", 5)];
        let plain = render(&s, 100, false);
        let colored = render(&s, 100, true);
        assert!(colored.contains("\x1b[31mUnreachable\x1b[0m"), "{colored}");
        let mut stripped = String::new();
        let mut chars = colored.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                stripped.push(c);
            }
        }
        assert_eq!(stripped, plain);
    }

    #[test]
    fn narrow_terminals_wrap_the_header() {
        let text = render(&healthy(), 60, false);
        let header: Vec<&str> = text.lines().skip(2).take(2).collect();
        assert!(header.iter().all(|l| cols(l) <= 60), "{header:?}");
        assert!(
            header[0].starts_with("shop  Ready · routing v17"),
            "{header:?}"
        );
        assert!(
            header[1].starts_with("      "),
            "continuation is indented: {header:?}"
        );
    }

    #[test]
    fn empty_namespaces_say_so() {
        let mut s = healthy();
        s.policies.clear();
        let text = render(&s, 100, false);
        assert!(text.contains("No CachePolicy and no RedisInstance in namespace shop."));
    }

    #[test]
    fn messages_cannot_reach_the_terminal_as_escapes() {
        let mut s = healthy();
        s.policies[0].recommendations = vec!["evil \x1b]0;title\x07 advice".into()];
        let text = render(&s, 100, false);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
        assert!(text.contains("evil ]0;title advice"), "{text}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(group(81_234), "81,234");
        assert_eq!(group(120_000), "120,000");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(compact(950), "950");
        assert_eq!(compact(10_234), "10.2k");
        assert_eq!(compact(2_500_000), "2.5M");
        assert_eq!(share(100.0), "100%");
        assert_eq!(share(61.04), "61%");
        assert_eq!(share(0.01), "<1%");
        assert_eq!(share(99.99), ">99%");
        assert_eq!(format_ms(3_600_000), "1h");
        assert_eq!(format_ms(5_400_000), "1h30m");
        assert_eq!(format_ms(1500), "1500ms");
        assert_eq!(human_secs(125), "2m");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(3 * 86400), "3d");
    }

    // --- building from objects ---------------------------------------------------------------

    fn ri(name: &str, labels: serde_json::Value, status: serde_json::Value) -> RedisInstance {
        serde_json::from_value(json!({
            "apiVersion": "redisfleet.io/v1alpha1", "kind": "RedisInstance",
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"external": {"host": "127.0.0.1", "port": 7001}, "capacity": "30Mi"},
            "status": status,
        }))
        .unwrap()
    }

    fn objects() -> Objects {
        let ready = |used: i64| {
            json!({
                "phase": "Ready", "endpoint": "127.0.0.1:7001",
                "memory": {"usedBytes": used, "capacityBytes": 30 * MIB, "used": "x", "capacity": "30.0Mi"},
                "stats": {"hits": 93, "misses": 7, "hitRatio": 0.93, "hitPercent": 93, "opsPerSecond": 850, "connectedClients": 3, "evictedKeys": 0},
                "keys": 10234, "latency": "420µs", "latencyMicros": 420,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "",
                                "lastTransitionTime": "2025-06-01T11:00:00Z"}],
            })
        };
        let shop =
            |tier: &str| json!({"app.kubernetes.io/part-of": "shop", "redisfleet.io/tier": tier});
        let instances = vec![
            ri("tertiary", shop("warm"), ready(0)),
            ri("primary", shop("hot"), ready(16_357_785)),
            ri("secondary", shop("warm"), ready(3 * MIB as i64)),
            // Not part of the shop, and never probed: capacity from spec.
            ri("legacy", json!({}), json!(null)),
        ];
        let policy: CachePolicy = serde_json::from_value(json!({
            "apiVersion": "redisfleet.io/v1alpha1", "kind": "CachePolicy",
            "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {
                "instanceSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shop"}},
                "routingConfigMap": "shop-redis-routing",
                "categories": [
                    {"name": "auth", "keyPrefixes": ["auth:", "session:"], "tier": "hot", "fallbackTier": "warm",
                     "ttl": {"default": "1h", "max": "24h", "adaptive": true}},
                    {"name": "user", "keyPrefixes": ["user:"], "tier": "warm"},
                ],
                "defaultCategory": {"tier": "warm", "ttl": {"default": "1h"}},
                "balancing": {"capacityThreshold": 75},
            },
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "",
                                "lastTransitionTime": "2025-06-01T11:00:00Z"}],
                "routing": {"configMap": "shop-redis-routing", "version": 17, "hash": "abc",
                            "publishedAt": "2025-06-01T11:58:00Z"},
                "failovers": [{"category": "auth", "from": "primary", "to": "secondary", "slots": 16384,
                               "since": "2025-06-01T11:57:55Z"}],
                "sidecars": {"count": 3, "minVersion": 16},
                "recommendations": ["add an instance"],
            },
        }))
        .unwrap();
        let endpoint = |port| InstanceEndpoint {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            username_secret: None,
            password_secret: None,
        };
        let table = RoutingTable {
            schema_version: crate::routing::table::SCHEMA_VERSION,
            version: 17,
            policy: "shop/shop".into(),
            instances: [
                ("primary".to_owned(), endpoint(7001)),
                ("secondary".to_owned(), endpoint(7002)),
                ("tertiary".to_owned(), endpoint(7003)),
            ]
            .into(),
            categories: vec![
                Category {
                    name: "auth".into(),
                    prefixes: vec!["auth:".into(), "session:".into()],
                    ttl: TtlRules::default(),
                    slots: vec![(0, 16383, "primary".to_owned()).into()],
                    placement_basis: None,
                },
                Category {
                    name: "user".into(),
                    prefixes: vec!["user:".into()],
                    ttl: TtlRules::default(),
                    slots: vec![
                        (0, 4095, "secondary".to_owned()).into(),
                        (4096, 8191, "tertiary".to_owned()).into(),
                        (8192, 12287, "secondary".to_owned()).into(),
                        (12288, 16383, "tertiary".to_owned()).into(),
                    ],
                    placement_basis: None,
                },
                Category {
                    name: "default".into(),
                    prefixes: vec![],
                    ttl: TtlRules {
                        default_ms: Some(3_600_000),
                        max_ms: None,
                        adaptive: false,
                    },
                    slots: vec![
                        (0, 10000, "secondary".to_owned()).into(),
                        (10001, 16383, "tertiary".to_owned()).into(),
                    ],
                    placement_basis: None,
                },
            ],
            migrating: vec![],
            failover: vec![
                Failover {
                    category: "auth".into(),
                    start: 0,
                    end: 8191,
                    from: "primary".into(),
                    to: "secondary".into(),
                },
                Failover {
                    category: "auth".into(),
                    start: 8192,
                    end: 16383,
                    from: "primary".into(),
                    to: "secondary".into(),
                },
            ],
            placement_bases: vec![],
            strategy: None,
        };
        table.validate().unwrap();
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "shop-redis-routing", "annotations": {VERSION_ANNOTATION: "17"}},
            "data": {TABLE_KEY: table.to_json()},
        }))
        .unwrap();
        Objects {
            instances,
            policies: vec![policy],
            config_maps: [("shop-redis-routing".to_owned(), Ok(cm))].into(),
        }
    }

    #[test]
    fn builds_slot_shares_from_runs() {
        let runs: Vec<SlotOwner> = vec![
            (0, 10000, "secondary".to_owned()).into(),
            (10001, 16383, "tertiary".to_owned()).into(),
        ];
        let shares = slot_shares(&runs);
        assert_eq!(
            shares
                .iter()
                .map(|s| (s.instance.as_str(), s.slots, s.percent))
                .collect::<Vec<_>>(),
            [("secondary", 10001, 61.04), ("tertiary", 6383, 38.96)]
        );
        // Interleaved runs add up; equal shares are ordered by name.
        let runs: Vec<SlotOwner> = vec![
            (0, 4095, "tertiary".to_owned()).into(),
            (4096, 8191, "secondary".to_owned()).into(),
            (8192, 12287, "tertiary".to_owned()).into(),
            (12288, 16383, "secondary".to_owned()).into(),
        ];
        let shares = slot_shares(&runs);
        assert_eq!(shares[0].instance, "secondary");
        assert_eq!((shares[0].slots, shares[0].percent), (8192, 50.0));
        assert_eq!((shares[1].slots, shares[1].percent), (8192, 50.0));
    }

    #[test]
    fn builds_a_snapshot_from_objects() {
        let s = build("shop", None, &objects(), at(0));
        assert_eq!(s.schema_version, SCHEMA_VERSION);
        assert_eq!(s.policies.len(), 1);
        let p = &s.policies[0];
        assert_eq!(p.ready, Some(true));
        assert_eq!(p.capacity_threshold, 75);
        assert_eq!(p.routing.version, Some(17));
        assert_eq!(p.routing.config_map, "shop-redis-routing");
        assert_eq!(p.routing.published_at, Some(at(120)));
        assert_eq!(p.routing.error, None);
        assert_eq!(
            p.sidecars,
            Some(SidecarsSnapshot {
                count: 3,
                min_version: Some(16),
                behind: true
            })
        );
        let names: Vec<&str> = p.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["primary", "secondary", "tertiary"],
            "selected, by name"
        );
        let primary = &p.instances[0];
        assert_eq!(primary.tier.as_deref(), Some("hot"));
        assert_eq!(primary.used_percent, Some(52.0));
        assert_eq!(primary.hit_percent, Some(93));
        assert_eq!(primary.latency.as_deref(), Some("420µs"));

        let cats: Vec<&str> = p.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cats, ["auth", "user", "default"]);
        let auth = &p.categories[0];
        assert_eq!(auth.tier.as_deref(), Some("hot"));
        assert_eq!(auth.fallback_tier.as_deref(), Some("warm"));
        assert_eq!(
            auth.ttl,
            TtlSnapshot {
                default: Some("1h".into()),
                max: Some("24h".into()),
                adaptive: true
            },
            "the spec's words, not milliseconds"
        );
        assert_eq!(auth.placement.len(), 1);
        assert_eq!(auth.placement[0].percent, 100.0);
        let user: Vec<(&str, f64)> = p.categories[1]
            .placement
            .iter()
            .map(|s| (s.instance.as_str(), s.percent))
            .collect();
        assert_eq!(user, [("secondary", 50.0), ("tertiary", 50.0)]);
        let default: Vec<(&str, f64)> = p.categories[2]
            .placement
            .iter()
            .map(|s| (s.instance.as_str(), s.percent))
            .collect();
        assert_eq!(default, [("secondary", 61.04), ("tertiary", 38.96)]);
        assert_eq!(p.categories[2].ttl.default.as_deref(), Some("1h"));

        assert_eq!(
            p.failovers,
            [FailoverSnapshot {
                category: "auth".into(),
                from: "primary".into(),
                to: "secondary".into(),
                slots: 16384,
                since: Some(at(125)),
            }],
            "ranges grouped, since from status"
        );
        assert_eq!(p.recommendations, ["add an instance"]);

        // Never probed, not selected: capacity from spec, no usage.
        assert_eq!(s.unselected_instances.len(), 1);
        let legacy = &s.unselected_instances[0];
        assert_eq!(legacy.name, "legacy");
        assert_eq!(legacy.phase, InstancePhase::Pending);
        assert_eq!(legacy.capacity_bytes, Some(30 * MIB));
        assert_eq!(legacy.used_percent, None);

        let text = render(&s, 100, false);
        println!("{text}");
        assert!(text.contains("secondary 50% · tertiary 50%"), "{text}");
        assert!(text.contains("secondary 61% · tertiary 39%"), "{text}");
        assert!(
            text.contains("auth → secondary (primary ready since 2m)"),
            "{text}"
        );
    }

    #[test]
    fn a_policy_view_leaves_other_instances_out() {
        let s = build("shop", Some("shop"), &objects(), at(0));
        assert_eq!(s.policy.as_deref(), Some("shop"));
        assert!(s.unselected_instances.is_empty());
        assert_eq!(s.policies.len(), 1);
    }

    #[test]
    fn without_a_routing_configmap_categories_come_from_the_spec() {
        let mut o = objects();
        o.config_maps.clear();
        let s = build("shop", None, &o, at(0));
        let p = &s.policies[0];
        assert_eq!(p.routing.version, Some(17), "from status");
        assert!(
            p.routing
                .error
                .as_deref()
                .unwrap()
                .contains("shop-redis-routing not found"),
            "{:?}",
            p.routing.error
        );
        let cats: Vec<&str> = p.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cats, ["auth", "user", "default"]);
        assert!(p.categories.iter().all(|c| c.placement.is_empty()));
        assert_eq!(p.failovers.len(), 1, "from status");

        o.config_maps
            .insert("shop-redis-routing".into(), Err("forbidden".into()));
        let s = build("shop", None, &o, at(0));
        assert_eq!(
            s.policies[0].routing.error.as_deref(),
            Some("routing ConfigMap shop-redis-routing: forbidden")
        );
        let text = render(&s, 100, false);
        assert!(
            text.contains("routing: routing ConfigMap shop-redis-routing: forbidden"),
            "{text}"
        );
        assert!(text.contains("not published"), "{text}");
    }

    #[test]
    fn json_has_a_schema_version_and_round_trips() {
        let s = build("shop", None, &objects(), at(0));
        let text = to_json(&s).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["schemaVersion"], 1);
        assert_eq!(value["generatedAt"], "2025-06-01T12:00:00Z");
        assert_eq!(value["policies"][0]["routing"]["version"], 17);
        assert_eq!(value["policies"][0]["instances"][0]["usedPercent"], 52.0);
        assert_eq!(
            value["policies"][0]["categories"][2]["placement"][0]["percent"],
            61.04
        );
        assert_eq!(value["policies"][0]["conditions"][0]["type"], "Ready");
        assert_eq!(value["unselectedInstances"][0]["phase"], "Pending");
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }
}
