//! Build, the pure step of `redis-fleet status`: fetched objects become a [`Snapshot`], which is
//! also the `-o json` document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

use crate::api::cache_policy::{
    CachePolicy, CachePolicySpec, CategoryUsage, DEFAULT_CATEGORY, TtlSpec, config_map_name,
    selects,
};
use crate::api::redis_instance::{InstancePhase, RedisInstance, TIER_LABEL};
use crate::routing::config_map::{annotated_version, table_of};
use crate::routing::slots::SLOT_COUNT;
use crate::routing::table::{SlotOwner, TABLE_KEY, TtlRules};

use super::SCHEMA_VERSION;
use super::fetch::Objects;
use super::snapshot::*;

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

pub(super) fn round2(x: f64) -> f64 {
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
pub(super) fn format_ms(ms: u64) -> String {
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
            for f in t.failover.iter().filter(|f| !f.handover) {
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
        memory: memory_by_instance(&status.usage),
        categories,
        failovers,
        migrating: table
            .as_ref()
            .map(|t| t.migrating.clone())
            .unwrap_or_default(),
        replication: status.replication.clone(),
        rebalance: status.rebalance.clone(),
        recommendations: status.recommendations.clone(),
        conditions: conditions_of(&status.conditions),
    }
}

/// `status.usage` by instance (by name), each instance's categories the largest first; the
/// copies an instance holds as a replica are entries of their own.
pub fn memory_by_instance(usage: &[CategoryUsage]) -> Vec<InstanceMemorySnapshot> {
    let mut by_instance: BTreeMap<&str, Vec<CategoryMemorySnapshot>> = BTreeMap::new();
    for u in usage {
        let entry = |bytes: i64, keys: Option<i64>, replica: bool| CategoryMemorySnapshot {
            category: u.category.clone(),
            bytes: bytes.max(0) as u64,
            keys: keys.map(|k| k.max(0) as u64),
            percent: 0.0,
            replica,
        };
        let cats = by_instance.entry(u.instance.as_str()).or_default();
        if u.bytes > 0 {
            cats.push(entry(u.bytes, u.keys, false));
        }
        if let Some(copies) = u.replica_bytes.filter(|b| *b > 0) {
            cats.push(entry(copies, None, true));
        }
    }
    by_instance
        .into_iter()
        .filter(|(_, cats)| !cats.is_empty())
        .map(|(instance, mut cats)| {
            cats.sort_by(|a, b| {
                b.bytes
                    .cmp(&a.bytes)
                    .then(a.category.cmp(&b.category))
                    .then(a.replica.cmp(&b.replica))
            });
            let total: u64 = cats.iter().map(|c| c.bytes).sum();
            for c in &mut cats {
                c.percent = round2(c.bytes as f64 * 100.0 / total.max(1) as f64);
            }
            InstanceMemorySnapshot {
                instance: instance.to_owned(),
                categories: cats,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_by_category_is_grouped_per_instance_largest_first() {
        let usage = |instance: &str, category: &str, bytes: i64| CategoryUsage {
            instance: instance.into(),
            category: category.into(),
            bytes,
            keys: Some(bytes / 100),
            replica_bytes: None,
        };
        let m = memory_by_instance(&[
            usage("secondary", "user", 300),
            usage("primary", "order", 250),
            usage("primary", "auth", 750),
            usage("primary", "menu", 0),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].instance, "primary");
        let cats: Vec<(&str, u64, f64)> = m[0]
            .categories
            .iter()
            .map(|c| (c.category.as_str(), c.bytes, c.percent))
            .collect();
        assert_eq!(cats, [("auth", 750, 75.0), ("order", 250, 25.0)]);
        assert_eq!(m[1].categories[0].keys, Some(3));
    }

    #[test]
    fn replica_copies_are_entries_of_their_own() {
        let m = memory_by_instance(&[
            CategoryUsage {
                instance: "secondary".into(),
                category: "auth".into(),
                bytes: 0,
                keys: Some(0),
                replica_bytes: Some(600),
            },
            CategoryUsage {
                instance: "secondary".into(),
                category: "user".into(),
                bytes: 200,
                keys: Some(2),
                replica_bytes: None,
            },
        ]);
        let cats: Vec<(&str, bool, u64, f64)> = m[0]
            .categories
            .iter()
            .map(|c| (c.category.as_str(), c.replica, c.bytes, c.percent))
            .collect();
        assert_eq!(
            cats,
            [("auth", true, 600, 75.0), ("user", false, 200, 25.0)]
        );
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
}
