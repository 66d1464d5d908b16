//! Sampling the instances of a policy: memory per category (which the rebalance planner works
//! from) and the live sidecars with their table versions (for `status.sidecars`). It reads
//! credentials through a [`SecretReader`] and reuses kept [`Connections`]; a sample is kept a
//! little while per policy ([`SampleCache`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::warn;

use crate::api::RedisInstance;
use crate::api::cache_policy::{CategoryUsage, SidecarsStatus};
use crate::redis::connect::redact;
use crate::redis::protocol::heartbeat;
use crate::redis::sample;
use crate::routing::keyspace::Resolver;
use crate::routing::table::RoutingTable;

use super::connections::Connections;
use super::secrets::SecretReader;

/// Most (category, instance) pairs `status.usage` lists one by one.
pub const USAGE_PAIRS: usize = 256;

/// What sampling the instances of a policy found.
#[derive(Debug, Clone, Default)]
pub struct PolicySample {
    /// Estimated bytes per (category, instance).
    pub category_bytes: BTreeMap<(String, String), u64>,
    /// Live sidecars (id → table version), over all instances.
    pub sidecars: BTreeMap<String, u64>,
}

impl PolicySample {
    /// As `status.usage`: per category and instance, or (beyond [`USAGE_PAIRS`] pairs) per
    /// category over all its instances, as instance `*` — status is an object of its own,
    /// limited to 1.5 MiB by etcd, and 1 000 instances × 50 categories are 3 MB of pairs.
    pub fn usage(&self) -> Vec<CategoryUsage> {
        let entry = |category: &str, instance: &str, bytes: u64| CategoryUsage {
            instance: instance.to_owned(),
            category: category.to_owned(),
            bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        };
        if self.category_bytes.len() <= USAGE_PAIRS {
            return self
                .category_bytes
                .iter()
                .map(|((category, instance), bytes)| entry(category, instance, *bytes))
                .collect();
        }
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for ((category, _), bytes) in &self.category_bytes {
            *totals.entry(category).or_default() += bytes;
        }
        totals
            .into_iter()
            .map(|(category, bytes)| entry(category, "*", bytes))
            .collect()
    }

    /// As `status.sidecars`.
    pub fn sidecars(&self, _table: Option<&RoutingTable>) -> Option<SidecarsStatus> {
        if self.sidecars.is_empty() {
            return None;
        }
        Some(SidecarsStatus {
            count: i32::try_from(self.sidecars.len()).unwrap_or(i32::MAX),
            min_version: self
                .sidecars
                .values()
                .min()
                .map(|v| i64::try_from(*v).unwrap_or(i64::MAX)),
        })
    }
}

/// Samples every serving instance of the table (and draining ones).
pub async fn sample_instances(
    secrets: &SecretReader,
    connections: &Connections,
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
        let Ok(target) = secrets.target_of(ri, namespace).await else {
            continue;
        };
        let instance = ObjectRef::from_obj(&**ri);
        let Ok(mut conn) = connections
            .connection(&instance, &target, Duration::from_secs(2))
            .await
        else {
            continue;
        };
        match sample::sample_categories(&mut conn, &resolver, sample::SAMPLE_KEYS).await {
            Ok(s) => {
                for (cat, bytes) in s.category_bytes {
                    out.category_bytes.insert((cat, name.clone()), bytes);
                }
            }
            Err(e) => {
                connections.drop_connection(&instance);
                warn!(instance = %name, error = %redact(&e.to_string(), &target.credentials), "sampling failed");
                continue;
            }
        }
        match heartbeat::read(&mut conn, &table.policy).await {
            Ok(beats) => {
                for (id, v) in beats {
                    let e = out.sidecars.entry(id).or_insert(v);
                    *e = (*e).min(v);
                }
            }
            Err(_) => connections.drop_connection(&instance),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_listed_per_pair_in_small_fleets_and_per_category_in_large_ones() {
        let mut sample = PolicySample::default();
        sample
            .category_bytes
            .insert(("auth".into(), "primary".into()), 10);
        sample
            .category_bytes
            .insert(("auth".into(), "secondary".into()), 5);
        let usage = sample.usage();
        assert_eq!(usage.len(), 2);
        assert_eq!(
            (usage[0].instance.as_str(), usage[0].bytes),
            ("primary", 10)
        );

        for i in 0..USAGE_PAIRS {
            sample
                .category_bytes
                .insert(("menu".into(), format!("redis-{i:04}")), 1);
        }
        let usage = sample.usage();
        assert_eq!(usage.len(), 2, "{usage:?}");
        assert_eq!(
            (
                usage[0].category.as_str(),
                usage[0].instance.as_str(),
                usage[0].bytes
            ),
            ("auth", "*", 15)
        );
        assert_eq!(usage[1].bytes, USAGE_PAIRS as i64);
    }
}

/// The last sample of each policy, with when it was taken.
#[derive(Debug, Default)]
pub struct SampleCache {
    samples: Mutex<HashMap<String, (Instant, PolicySample)>>,
}

impl SampleCache {
    /// The sample of policy `key` (`namespace/name`): the kept one while it is younger than
    /// `max_age`, else the one `take` takes (only then awaited), kept from now on.
    pub async fn get_or_take(
        &self,
        key: &str,
        max_age: Duration,
        take: impl Future<Output = PolicySample>,
    ) -> PolicySample {
        {
            let cache = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, s)) = cache.get(key)
                && at.elapsed() < max_age
            {
                return s.clone();
            }
        }
        let fresh = take.await;
        let mut cache = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(key.to_owned(), (Instant::now(), fresh.clone()));
        fresh
    }
}
