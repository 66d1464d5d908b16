//! Sampling an instance: how its memory and keys split over the categories (RANDOMKEY +
//! MEMORY USAGE scaled to its key count, or every key of a small instance), and how much of it
//! are copies the instance holds as the replica of slots another instance serves. Read-only.
//! The rebalance planner works from these estimates; which sidecars report which table version
//! there is [`super::heartbeat`].

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;

use crate::redis::keys::{RESERVED_PREFIX, scan_page};
use crate::routing::keyspace::{InstanceId, Resolver, Route};

/// What one sample saw on an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Keys in the database.
    pub keys: u64,
    /// Estimated bytes per category (application keys the instance serves or holds as
    /// anything but a replica: what moves with its slots).
    pub category_bytes: BTreeMap<String, u64>,
    /// Estimated keys per category (as `category_bytes`).
    pub category_keys: BTreeMap<String, u64>,
    /// Estimated bytes per replicated category that the instance holds as the replica of
    /// slots another instance serves (`docs/replication.md`): they stay where they are when
    /// the slots move elsewhere, and the serving instance's bytes count them once more.
    pub replica_bytes: BTreeMap<String, u64>,
}

/// Random keys looked at per sample: enough that a category holding a quarter of the keys is
/// estimated within about ±2 % of the instance (two standard deviations). With 512 (±4 %) a
/// plan for an instance at 85 % ended up to 5 points away from where it was planned to, and
/// the preview of `redis-fleet plan` (its own sample) as far from the operator's plan. A
/// sample is reused (by the operator, for up to ten minutes) while memory holds still, so the
/// cost is per change, not per probe: 4 096 commands in 64 pipelines (an instance being
/// emptied, a legacy Redis, is sampled about every 30 s: `operator/sampling.rs`).
pub const SAMPLE_KEYS: usize = 2048;

/// Commands per pipeline. The operator keeps one connection per instance, and a connection's
/// buffers keep the size of the largest request and reply they ever held: pipelines of 512
/// grew them by ~45 KiB each, 45 MiB at 1 000 instances; 64 keep them in their initial 8 KiB.
const PIPELINE: usize = 64;

/// Samples `n` random keys (every key, when it holds no more than `n`) of the instance named
/// `instance` in the resolver's table and estimates the bytes and keys of each category, the
/// copies it holds as a replica apart.
pub async fn sample_categories(
    conn: &mut (impl ConnectionLike + Send),
    resolver: &Resolver,
    instance: &str,
    n: usize,
) -> redis::RedisResult<Sample> {
    let keys: u64 = redis::cmd("DBSIZE").query_async(conn).await?;
    if keys == 0 {
        return Ok(Sample::default());
    }
    let counted = if keys <= n as u64 {
        every_key(conn, n).await?
    } else {
        None
    };
    let (keys, picked) = match counted {
        // Counted, not estimated: no scaling by DBSIZE, which counts keys whose time ran
        // out and that no one removed yet (SCAN skips them).
        Some(all) => (all.len() as u64, all),
        None => (keys, random_keys(conn, n).await?),
    };
    if picked.is_empty() {
        return Ok(Sample {
            keys,
            ..Sample::default()
        });
    }
    let mut sizes: Vec<Option<u64>> = Vec::with_capacity(picked.len());
    for chunk in picked.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for k in chunk {
            // The default nested-value sampling: exact for strings, bounded work for a big
            // hash or list (SAMPLES 0 would walk every element of it).
            pipe.cmd("MEMORY").arg("USAGE").arg(k);
        }
        let some: Vec<Option<u64>> = pipe.query_async(conn).await?;
        sizes.extend(some);
    }
    let me = resolver.instance_id(instance);
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut copies: BTreeMap<String, u64> = BTreeMap::new();
    for (k, size) in picked.iter().zip(sizes) {
        if k.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let route = resolver.resolve(k);
        let cat = &resolver.categories()[usize::from(route.category)].name;
        if me.is_some_and(|me| is_replica_copy(resolver, &route, me)) {
            *copies.entry(cat.clone()).or_default() += size.unwrap_or(0);
            continue;
        }
        let sum = sums.entry(cat.clone()).or_default();
        sum.0 += size.unwrap_or(0);
        sum.1 += 1;
    }
    let samples = picked.len() as u64;
    let scale = |x: u64| x.saturating_mul(keys) / samples;
    Ok(Sample {
        keys,
        category_bytes: sums.iter().map(|(c, s)| (c.clone(), scale(s.0))).collect(),
        category_keys: sums.iter().map(|(c, s)| (c.clone(), scale(s.1))).collect(),
        replica_bytes: copies.iter().map(|(c, b)| (c.clone(), scale(*b))).collect(),
    })
}

/// `n` keys picked by RANDOMKEY (some may repeat).
async fn random_keys(
    conn: &mut (impl ConnectionLike + Send),
    n: usize,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut picked = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let mut pipe = redis::pipe();
        for _ in 0..left.min(PIPELINE) {
            pipe.cmd("RANDOMKEY");
        }
        left -= left.min(PIPELINE);
        let some: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
        picked.extend(some.into_iter().flatten());
    }
    Ok(picked)
}

/// SCAN calls [`every_key`] makes at most, [`PIPELINE`] buckets each: an instance of up to
/// [`SAMPLE_KEYS`] keys has a table of up to 4 096 buckets, but a big instance just emptied
/// keeps its large one a while (Redis shrinks it in the background, not while it forks).
const SCAN_CALLS: usize = 256;

/// Every key of an instance that holds at most about `n`, by SCAN (each key once): exact, and
/// cheaper than `n` RANDOMKEYs that pick the same few keys again and again — an instance being
/// emptied, holding only the fleet's own keys in the end, is sampled about every 30 s. `None` when
/// the walk does not end within [`SCAN_CALLS`] calls or finds more than `n` keys (the instance
/// grew meanwhile): RANDOMKEY then.
async fn every_key(
    conn: &mut (impl ConnectionLike + Send),
    n: usize,
) -> redis::RedisResult<Option<Vec<Vec<u8>>>> {
    let mut seen = std::collections::HashSet::new();
    let mut cursor: u64 = 0;
    for _ in 0..SCAN_CALLS {
        let (next, batch) = scan_page(conn, cursor, b"*", PIPELINE).await?;
        seen.extend(batch);
        if seen.len() > n {
            return Ok(None);
        }
        cursor = next;
        if cursor == 0 {
            return Ok(Some(seen.into_iter().collect()));
        }
    }
    Ok(None)
}

/// Whether a key routed as `route` is, on instance `me`, a replica's copy: the table names
/// `me` the replica of its slot (seeded, seeding or outgoing) and another instance serves it.
fn is_replica_copy(resolver: &Resolver, route: &Route, me: InstanceId) -> bool {
    route.target != me && resolver.replica_targets(route).any(|r| r == me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::two_instance_table;
    use crate::routing::table::{CategoryReplication, Failover, ReplicationMode};

    #[test]
    fn a_copy_is_a_replicas_only_where_the_table_names_it_and_another_instance_serves() {
        let mut t = two_instance_table();
        // auth: 0-8191 on primary (replica secondary), 8192-16383 on secondary (replica primary).
        t.categories[0].replication = Some(CategoryReplication {
            mode: ReplicationMode::Sync,
            replicas: vec![
                (0, 8191, "secondary".to_owned()).into(),
                (8192, 16383, "primary".to_owned()).into(),
            ],
            seeding: vec![(8192, 16383, "primary".to_owned()).into()],
            outgoing: Vec::new(),
        });
        let r = Resolver::new(t.clone()).unwrap();
        let p = r.instance_id("primary").unwrap();
        let s = r.instance_id("secondary").unwrap();
        let auth = r.category_id("auth").unwrap();
        let default = r.category_id("default").unwrap();
        let copy = |category, slot, on| is_replica_copy(&r, &r.route(category, slot), on);
        assert!(copy(auth, 10, s), "secondary replicates primary's slot");
        assert!(!copy(auth, 10, p), "primary serves it");
        assert!(copy(auth, 9000, p), "a seeding replica's copy too");
        assert!(!copy(default, 10, s), "an unreplicated category");

        // primary's range failed over to its replica: secondary serves it now.
        t.failover.push(Failover {
            category: "auth".into(),
            start: 0,
            end: 8191,
            from: "primary".into(),
            to: "secondary".into(),
            handover: false,
        });
        let r = Resolver::new(t).unwrap();
        assert!(
            !is_replica_copy(&r, &r.route(auth, 10), s),
            "served, not a copy"
        );
    }
}
