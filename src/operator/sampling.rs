//! Sampling the instances of a policy: memory per category (which the rebalance planner works
//! from) and the live sidecars with their table versions (for `status.sidecars`). It reads
//! credentials through a [`SecretReader`] and reuses kept [`Connections`]; a sample is kept a
//! little while per policy ([`SampleCache`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, warn};

use crate::api::RedisInstance;
use crate::api::cache_policy::{CategoryUsage, RebalanceStatus, SidecarsStatus};
use crate::redis::connect::redact;
use crate::redis::protocol::heartbeat;
use crate::redis::sample;
use crate::routing::keyspace::Resolver;
use crate::routing::table::RoutingTable;

use super::connections::Connections;
use super::secrets::SecretReader;
use super::status_writes::moved_a_point;

/// Most (category, instance) pairs `status.usage` lists one by one.
pub const USAGE_PAIRS: usize = 256;

/// Bytes, keys and replica bytes of a (category, instance).
type Sums = (u64, Option<u64>, Option<u64>);

/// What sampling the instances of a policy found.
#[derive(Debug, Clone, Default)]
pub struct PolicySample {
    /// Estimated bytes per (category, instance).
    pub category_bytes: BTreeMap<(String, String), u64>,
    /// Estimated keys per (category, instance).
    pub category_keys: BTreeMap<(String, String), u64>,
    /// Estimated bytes per (replicated category, instance) that the instance holds as the
    /// replica of slots another instance serves; not in `category_bytes`.
    pub replica_bytes: BTreeMap<(String, String), u64>,
    /// Live sidecars (id → table version), over all instances.
    pub sidecars: BTreeMap<String, u64>,
    /// Whether any instance's heartbeats were read: without, `sidecars` being empty says
    /// nothing.
    pub heartbeats_read: bool,
}

impl PolicySample {
    /// Adds what sampling `instance` found.
    fn add(&mut self, instance: &str, sample: &sample::Sample) {
        let pair = |cat: &String| (cat.clone(), instance.to_owned());
        for (cat, bytes) in &sample.category_bytes {
            self.category_bytes.insert(pair(cat), *bytes);
        }
        for (cat, keys) in &sample.category_keys {
            self.category_keys.insert(pair(cat), *keys);
        }
        for (cat, bytes) in &sample.replica_bytes {
            self.replica_bytes.insert(pair(cat), *bytes);
        }
    }

    /// As `status.usage`: per category and instance, or (beyond [`USAGE_PAIRS`] pairs) per
    /// category over all its instances, as instance `*` — status is an object of its own,
    /// limited to 1.5 MiB by etcd, and 1 000 instances × 50 categories are 3 MB of pairs.
    pub fn usage(&self) -> Vec<CategoryUsage> {
        let int = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        // Every pair with data: served bytes, replica copies, or both.
        let mut pairs: BTreeMap<&(String, String), Sums> = BTreeMap::new();
        for (pair, bytes) in &self.category_bytes {
            pairs.entry(pair).or_default().0 = *bytes;
        }
        for (pair, keys) in &self.category_keys {
            pairs.entry(pair).or_default().1 = Some(*keys);
        }
        for (pair, bytes) in &self.replica_bytes {
            pairs.entry(pair).or_default().2 = Some(*bytes);
        }
        let entry = |category: &str,
                     instance: &str,
                     (bytes, keys, copies): (u64, Option<u64>, Option<u64>)| {
            CategoryUsage {
                instance: instance.to_owned(),
                category: category.to_owned(),
                bytes: int(bytes),
                keys: keys.map(int),
                replica_bytes: copies.filter(|b| *b > 0).map(int),
            }
        };
        if pairs.len() <= USAGE_PAIRS {
            return pairs
                .into_iter()
                .map(|(pair, sums)| entry(&pair.0, &pair.1, sums))
                .collect();
        }
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        let mut totals: BTreeMap<&str, Sums> = BTreeMap::new();
        for (pair, (bytes, keys, copies)) in pairs {
            let total = totals.entry(&pair.0).or_default();
            total.0 += bytes;
            total.1 = add(total.1, keys);
            total.2 = add(total.2, copies);
        }
        totals
            .into_iter()
            .map(|(category, sums)| entry(category, "*", sums))
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

/// A kept sample of an instance is reused this long at most (while its memory stays within a
/// point of capacity of what it was): sampling looks at [`sample::SAMPLE_KEYS`] keys, so at
/// 1 000 instances one sample per reconcile would cost four million commands every 30 s.
pub const SAMPLE_REUSE: Duration = Duration::from_secs(600);

/// While a plan moves data, a kept sample younger than this stands whatever changed. Every
/// status write of the Job (one a second) wakes a reconcile, memory moves a point of a small
/// instance's capacity about as often, and each of the plan's tables is another layout: each
/// instance was sampled again about once a second, 4 096 commands each time — on the targets
/// of the bench's 20 000-key drain as many as the copy's own per key moved (`make
/// bench-rebalance` counts them). No plan is made while one runs, and its estimate is the
/// sample it was planned from; the categories in status lag this much at most. Once the plan
/// is over, the instances it moved data out of or into are sampled again (a sample taken
/// before it ended stands for data that moved), and then the usual rules hold.
pub const SAMPLE_EVERY_WHILE_MOVING: Duration = Duration::from_secs(30);

/// Instances read per reconcile for sidecar heartbeats: every sidecar heartbeats every
/// instance of its table, so a few show them all; the read is O(sidecars) per instance.
pub const HEARTBEAT_READS: usize = 3;

/// Which plan a sample was taken under: the newest plan's id, and whether it still moved data.
/// A plan moves data out of some instances and into others, so a sample of one of them taken
/// before the plan ended is not reused after (see [`Kept::reusable`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanEpoch {
    /// `status.rebalance.planId` (0 before the first plan).
    pub plan_id: i64,
    /// Whether that plan moves data now.
    pub moving: bool,
}

/// The newest plan as sampling sees it: its epoch, and the instances it moves data out of or
/// into (`status.rebalance.moves`).
#[derive(Debug, Clone, Default)]
pub struct NewestPlan {
    pub epoch: PlanEpoch,
    pub instances: BTreeSet<String>,
}

impl NewestPlan {
    /// From `status.rebalance` (`None`: no plan yet).
    pub fn of(rebalance: Option<&RebalanceStatus>) -> Self {
        let Some(r) = rebalance else {
            return Self::default();
        };
        NewestPlan {
            epoch: PlanEpoch {
                plan_id: r.plan_id,
                moving: r.is_active(),
            },
            instances: r
                .moves
                .iter()
                .flat_map(|m| [m.from.clone(), m.to.clone()])
                .collect(),
        }
    }
}

/// Samples the serving instances of the table (and draining ones): memory per category where
/// the kept sample cannot be reused ([`Kept::reusable`]; `plan`: the newest plan, whether it
/// moves data now, and between which instances), heartbeats on the first [`HEARTBEAT_READS`]
/// instances that answer.
#[allow(clippy::too_many_arguments)]
pub async fn sample_instances(
    secrets: &SecretReader,
    connections: &Connections,
    cache: &SampleCache,
    policy: &str,
    namespace: &str,
    selected: &[Arc<RedisInstance>],
    table: &RoutingTable,
    plan: &NewestPlan,
) -> PolicySample {
    let epoch = plan.epoch;
    let mut out = PolicySample::default();
    let layout = layout_of(table);
    let mut resolver: Option<Resolver> = None;
    let mut heartbeats_read = 0;
    let mut sampled = Vec::new();
    for ri in selected {
        let name = ri.name_any();
        let in_table = table.instances.contains_key(&name);
        if !in_table && !ri.spec.drain {
            continue;
        }
        let status = ri.status.as_ref();
        if !matches!(status.and_then(|s| s.phase), Some(p) if p.serves_traffic()) {
            continue;
        }
        sampled.push(name.clone());
        let memory = status.and_then(|s| s.memory.as_ref());
        let used = memory.map_or(0, |m| m.used_bytes.max(0) as u64);
        let capacity = memory.and_then(|m| u64::try_from(m.capacity_bytes).ok());
        let reuse = Reuse {
            layout,
            epoch,
            in_plan: plan.instances.contains(&name),
            emptied: ri.spec.drain && table.serves_nothing(&name),
        };
        let kept = cache.reusable(policy, &name, used, capacity, &reuse);
        let wants_heartbeats = heartbeats_read < HEARTBEAT_READS;
        if let Some(sample) = &kept {
            out.add(&name, sample);
            if !wants_heartbeats {
                continue;
            }
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
        if kept.is_none() {
            if resolver.is_none() {
                match Resolver::new(table.clone()) {
                    Ok(r) => resolver = Some(r),
                    Err(_) => return out,
                }
            }
            let Some(resolver) = &resolver else {
                return out;
            };
            match sample::sample_categories(&mut conn, resolver, &name, sample::SAMPLE_KEYS).await {
                Ok(s) => {
                    debug!(instance = %name, used, keys = s.keys, ?epoch, "sampled an instance");
                    out.add(&name, &s);
                    cache.keep(policy, &name, used, layout, epoch, s);
                }
                Err(e) => {
                    connections.drop_connection(&instance);
                    warn!(instance = %name, error = %redact(&e.to_string(), &target.credentials), "sampling failed");
                    continue;
                }
            }
        }
        if wants_heartbeats {
            match heartbeat::read(&mut conn, &table.policy).await {
                Ok(beats) => {
                    heartbeats_read += 1;
                    out.heartbeats_read = true;
                    for (id, v) in beats {
                        let e = out.sidecars.entry(id).or_insert(v);
                        *e = (*e).min(v);
                    }
                }
                Err(_) => connections.drop_connection(&instance),
            }
        }
    }
    cache.forget_others(policy, &sampled);
    out
}

/// What of a table decides which category a key is in and where it lives: categories and
/// prefixes, owners, migrations, failovers (the table's content, not its version). A sample
/// taken under another table may count keys that moved since: a drained instance kept
/// "holding" them, and the planner kept planning moves of nothing (found by `make chaos`).
fn layout_of(table: &RoutingTable) -> u64 {
    crate::routing::table::fnv1a64(table.content_hash().as_bytes())
}

/// What decides whether a kept sample of an instance is reused ([`Kept::reusable`]).
#[derive(Debug, Clone, Copy)]
pub struct Reuse {
    /// The table's layout (`layout_of`).
    pub layout: u64,
    /// The newest plan.
    pub epoch: PlanEpoch,
    /// Whether the newest plan moves data out of or into the instance.
    pub in_plan: bool,
    /// Whether the instance drains by being emptied: draining, and the table gives it nothing
    /// ([`RoutingTable::serves_nothing`]).
    pub emptied: bool,
}

/// A draining instance that is emptied by moving every key it holds is sampled again after
/// this long, whatever its memory: whether its keys are moved off rests on its sample alone.
/// Shorter than the policy's 30 s resync, which then samples it (some 20–50 s apart).
pub const EMPTIED_SAMPLE_REUSE: Duration = Duration::from_secs(20);

/// A kept sample of one instance.
#[derive(Debug, Clone)]
pub struct Kept {
    at: Instant,
    /// The instance's memory (its status) when the sample was taken.
    used_bytes: u64,
    layout: u64,
    epoch: PlanEpoch,
    sample: sample::Sample,
}

impl Kept {
    /// Whether this sample still stands for an instance using `used` bytes of `capacity`,
    /// as `reuse` says.
    ///
    /// While a plan moves data, any sample younger than [`SAMPLE_EVERY_WHILE_MOVING`] stands.
    /// Otherwise it must have been taken under the same categories and owners, less than
    /// [`SAMPLE_REUSE`] ago ([`EMPTIED_SAMPLE_REUSE`] for an instance being emptied), and the
    /// memory must not have moved a point of capacity since (then the instance's status was
    /// written anew, and a planner needs a sample taken after it). Of an instance the newest
    /// plan moves data out of or into, it must have been taken under that plan in its present
    /// state: once the plan is over, a sample taken before it ended is taken again.
    ///
    /// The plan counts because the layout does not always tell: emptying a legacy instance
    /// moves every key it holds into the ranges' owners, and the table after it has the
    /// layout of the table before it. A sample of the full instance, taken when the plan was
    /// made, stood after it: the planner saw the emptied instance still holding data and made
    /// plan after plan that moved nothing.
    ///
    /// An instance being emptied is sampled again once its sample is 20 s old (at the next
    /// reconcile: the policy resyncs every 30 s), because its memory figure tells too little:
    /// the status is written when a probe finds memory a point away, so an instance emptied
    /// and refilled between two probes shows no change; and at the sizes a legacy Redis is
    /// refilled by, the server's own buffers move its memory by as much as a point (`make
    /// test`'s bench: the empty legacy instance at 1.7–2.3 MB of 64 MiB, 10 000 keys 1.4 MB).
    /// A stale sample of it empty left keys behind on an instance about to be retired.
    pub fn reusable(&self, used: u64, capacity: Option<u64>, reuse: &Reuse) -> bool {
        let age = self.at.elapsed();
        if reuse.epoch.moving && age < SAMPLE_EVERY_WHILE_MOVING {
            return true;
        }
        let most = if reuse.emptied {
            EMPTIED_SAMPLE_REUSE
        } else {
            SAMPLE_REUSE
        };
        self.layout == reuse.layout
            && (!reuse.in_plan || self.epoch == reuse.epoch)
            && age < most
            && !moved_a_point(self.used_bytes, used, capacity)
    }
}

/// Kept samples, by policy and instance.
#[derive(Debug, Default)]
pub struct SampleCache {
    kept: Mutex<HashMap<(String, String), Kept>>,
}

impl SampleCache {
    /// The kept sample of `instance`, if it can be reused ([`Kept::reusable`]).
    pub fn reusable(
        &self,
        policy: &str,
        instance: &str,
        used: u64,
        capacity: Option<u64>,
        reuse: &Reuse,
    ) -> Option<sample::Sample> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(&(policy.to_owned(), instance.to_owned()))
            .filter(|k| k.reusable(used, capacity, reuse))
            .map(|k| k.sample.clone())
    }

    fn keep(
        &self,
        policy: &str,
        instance: &str,
        used_bytes: u64,
        layout: u64,
        epoch: PlanEpoch,
        sample: sample::Sample,
    ) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.insert(
            (policy.to_owned(), instance.to_owned()),
            Kept {
                at: Instant::now(),
                used_bytes,
                layout,
                epoch,
                sample,
            },
        );
    }

    /// Drops the samples of `policy`'s instances other than `instances`.
    fn forget_others(&self, policy: &str, instances: &[String]) {
        let keep: std::collections::HashSet<&str> = instances.iter().map(String::as_str).collect();
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|(p, i), _| p != policy || keep.contains(i.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_sample_stands_until_memory_moves_a_point_the_layout_changes_its_plan_ends_or_it_ages_and_longer_while_a_plan_moves_data()
     {
        let idle = PlanEpoch {
            plan_id: 3,
            moving: false,
        };
        let during = PlanEpoch {
            plan_id: 4,
            moving: true,
        };
        let after = PlanEpoch {
            plan_id: 4,
            moving: false,
        };
        let reuse = |layout, epoch, in_plan| Reuse {
            layout,
            epoch,
            in_plan,
            emptied: false,
        };
        let kept = Kept {
            at: Instant::now(),
            used_bytes: 10 << 20,
            layout: 7,
            epoch: idle,
            sample: sample::Sample::default(),
        };
        let cap = Some(30 << 20);
        assert!(kept.reusable((10 << 20) + 100_000, cap, &reuse(7, idle, false)));
        assert!(
            !kept.reusable((10 << 20) + 400_000, cap, &reuse(7, idle, false)),
            "a point moved"
        );
        assert!(
            !kept.reusable(10 << 20, cap, &reuse(8, idle, false)),
            "other categories"
        );
        // While a plan moves data a young sample stands, a point moved or another layout
        // (the plan's tables) or not; an older one as at other times.
        assert!(kept.reusable((10 << 20) + 400_000, cap, &reuse(7, during, true)));
        assert!(kept.reusable(10 << 20, cap, &reuse(8, during, true)));
        // Once the plan is over, a sample of an instance it moved data out of or into, taken
        // before it or while it moved data, is taken again, even under a table of the same
        // layout (a legacy instance emptied); one of an instance it left alone stands.
        assert!(
            !kept.reusable(10 << 20, cap, &reuse(7, after, true)),
            "taken before the plan"
        );
        assert!(
            kept.reusable(10 << 20, cap, &reuse(7, after, false)),
            "not in it"
        );
        let in_plan = Kept {
            epoch: during,
            ..kept.clone()
        };
        assert!(
            !in_plan.reusable(10 << 20, cap, &reuse(7, after, true)),
            "taken during it"
        );
        let older = Kept {
            at: Instant::now() - SAMPLE_EVERY_WHILE_MOVING,
            ..in_plan.clone()
        };
        assert!(!older.reusable((10 << 20) + 400_000, cap, &reuse(7, during, true)));
        assert!(!older.reusable(10 << 20, cap, &reuse(8, during, true)));
        assert!(older.reusable((10 << 20) + 100_000, cap, &reuse(7, during, true)));
        let taken_after = Kept {
            epoch: after,
            ..kept.clone()
        };
        assert!(taken_after.reusable(10 << 20, cap, &reuse(7, after, true)));
        // An instance being emptied is sampled again after 20 s, whatever its memory.
        let emptied = Reuse {
            emptied: true,
            ..reuse(7, after, true)
        };
        assert!(taken_after.reusable(10 << 20, cap, &emptied));
        let older_after = Kept {
            at: Instant::now() - EMPTIED_SAMPLE_REUSE,
            ..taken_after.clone()
        };
        assert!(!older_after.reusable(10 << 20, cap, &emptied), "emptied");
        assert!(older_after.reusable(10 << 20, cap, &reuse(7, after, true)));
        let old = Kept {
            at: Instant::now() - SAMPLE_REUSE,
            ..kept
        };
        assert!(
            !old.reusable(10 << 20, cap, &reuse(7, idle, false)),
            "too old"
        );
        assert!(
            !old.reusable(10 << 20, cap, &reuse(7, during, true)),
            "too old"
        );
    }

    #[test]
    fn a_sample_is_taken_again_when_data_moved_between_instances() {
        let table = |owner: &str| {
            RoutingTable::from_json(&format!(
                r#"{{"schemaVersion": 1, "version": 3, "policy": "shop/shop",
                    "instances": {{"a": {{"host": "a", "port": 6379}}, "b": {{"host": "b", "port": 6379}}}},
                    "categories": [{{"name": "user", "prefixes": ["user:"], "slots": [[0, 16383, "{owner}"]]}},
                                   {{"name": "default", "slots": [[0, 16383, "a"]]}}]}}"#
            ))
            .unwrap()
        };
        let mut republished = table("a");
        republished.version = 4;
        assert_eq!(
            layout_of(&table("a")),
            layout_of(&republished),
            "a version alone"
        );
        assert_ne!(
            layout_of(&table("a")),
            layout_of(&table("b")),
            "the owners changed"
        );
    }

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
