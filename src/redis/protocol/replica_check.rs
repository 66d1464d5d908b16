//! The divergence check of a seeded replica (`docs/replication.md`, "The check"): what the
//! replica missed — an `async` result dropped, an apply refused (`-OOM`) or lost with a
//! replica that was briefly gone, a `sync` write answered `-NOREPLICA` — is found by comparing
//! each key's recorded result version and existence on the writer and the replica, looked at
//! again after a pause (a result on its way is not a divergence), and repaired by copying the
//! writer's state with a fresh version ([`replica::copy_states`]), which never undoes a write
//! that races it.
//!
//! What it cannot see: a value that differs while both sides exist and neither still records
//! a version for the key (versions are forgotten after [`replica::FORGET_AFTER`]). Comparing
//! `DUMP` payloads would see it, but a value restored from a payload may take another
//! encoding than the writer's (a hash that grew and shrank), and the check would then report
//! and repair the same key on every pass.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionLike;

use super::names;
use super::replica::{self, Version};
use crate::routing::keyspace::{CategoryId, Resolver};
use crate::routing::slots::{SlotRange, key_slot};

/// KEYS: for each key its slot's applied-versions hash and the key. Replies, per key, the
/// version recorded for it (nil when none) and whether it exists. Reads only.
pub const STANDING_SCRIPT: &str = r"
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('HGET', KEYS[i], KEYS[i + 1])
  out[#out + 1] = redis.call('EXISTS', KEYS[i + 1])
end
return out
";

/// A key as one instance holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The version of the last result written or applied there, while it is remembered.
    pub version: Option<Version>,
    /// Whether the key exists there.
    pub exists: bool,
}

/// Whether the replica misses what the writer holds for a key: a result newer than the one
/// it applied, or — where either side forgot its versions — the key on one side only.
pub fn diverges(writer: &Standing, replica: &Standing) -> bool {
    match (writer.version, replica.version) {
        (Some(w), Some(r)) => w > r,
        _ => writer.exists != replica.exists,
    }
}

/// What a check found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    /// Keys compared (on the writer, then on the replica; a key on both counts twice).
    pub keys: u64,
    /// Keys still diverging after the pause: the replica missed a result.
    pub divergent: u64,
    /// Divergent keys whose state the replica took from the writer.
    pub repaired: u64,
    /// Divergent keys the replica could not take (`-OOM`, an unreadable payload).
    pub failed: u64,
}

/// Each key's [`Standing`] on one instance.
async fn standings(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
    keys: &[Vec<u8>],
) -> redis::RedisResult<Vec<Standing>> {
    let script = redis::Script::new(STANDING_SCRIPT);
    let mut invocation = script.prepare_invoke();
    for k in keys {
        invocation.key(names::applied_versions(policy, key_slot(k)));
        invocation.key(k.as_slice());
    }
    let values: Vec<redis::Value> = invocation.invoke_async(conn).await?;
    let mut out = Vec::with_capacity(keys.len());
    for pair in values.chunks(2) {
        let version = match &pair[0] {
            redis::Value::BulkString(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<Version>().ok()),
            _ => None,
        };
        let exists = matches!(pair.get(1), Some(redis::Value::Int(n)) if *n > 0);
        out.push(Standing { version, exists });
    }
    if out.len() != keys.len() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the standing script",
            format!("{} answers for {} keys", out.len(), keys.len()),
        )));
    }
    Ok(out)
}

/// The keys of `keys` whose replica standing diverges from the writer's.
async fn diverging(
    writer: &mut (impl ConnectionLike + Send),
    replica_conn: &mut (impl ConnectionLike + Send),
    policy: &str,
    keys: &[Vec<u8>],
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(100) {
        let on_writer = standings(writer, policy, chunk).await?;
        let on_replica = standings(replica_conn, policy, chunk).await?;
        for (i, key) in chunk.iter().enumerate() {
            if diverges(&on_writer[i], &on_replica[i]) {
                out.push(key.clone());
            }
        }
    }
    Ok(out)
}

/// Compares the keys of `category` in `ranges` on `writer` and its replica, waits `settle`,
/// compares the divergent ones again, and repairs those that still diverge under table
/// `version` (the table that makes `writer` the ranges' writer).
#[allow(clippy::too_many_arguments)]
pub async fn check(
    writer: &mut (impl ConnectionLike + Send),
    replica_conn: &mut (impl ConnectionLike + Send),
    resolver: &Resolver,
    category: CategoryId,
    ranges: &[SlotRange],
    policy: &str,
    version: u64,
    settle: Duration,
) -> redis::RedisResult<Checked> {
    use crate::redis::keys::RangeScan;
    let mut done = Checked::default();
    let mut candidates: BTreeSet<Vec<u8>> = BTreeSet::new();
    for side in 0..2 {
        let mut scan = RangeScan::new(resolver, category, ranges);
        loop {
            let batch = if side == 0 {
                scan.next_batch(writer).await?
            } else {
                scan.next_batch(replica_conn).await?
            };
            let Some(batch) = batch else { break };
            done.keys += batch.len() as u64;
            candidates.extend(diverging(writer, replica_conn, policy, &batch).await?);
        }
    }
    if candidates.is_empty() {
        return Ok(done);
    }
    tokio::time::sleep(settle).await;
    let candidates: Vec<Vec<u8>> = candidates.into_iter().collect();
    let still = diverging(writer, replica_conn, policy, &candidates).await?;
    done.divergent = still.len() as u64;
    for chunk in still.chunks(100) {
        let keys: Vec<Bytes> = chunk.iter().map(|k| Bytes::from(k.clone())).collect();
        let applied = replica::copy_states(writer, replica_conn, policy, version, &keys).await?;
        done.repaired += applied.applied;
        done.failed += applied.failed;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, counter: u64) -> Option<Version> {
        Some(Version { epoch, counter })
    }

    #[test]
    fn a_replica_diverges_when_it_missed_a_newer_result_or_holds_another_existence() {
        let s = |version, exists| Standing { version, exists };
        // Versions on both sides decide alone.
        assert!(diverges(&s(at(3, 10), true), &s(at(3, 9), true)));
        assert!(diverges(&s(at(4, 1), false), &s(at(3, 9), true)));
        assert!(!diverges(&s(at(3, 10), true), &s(at(3, 10), true)));
        // A replica ahead (a newer writer's result, the range moved since) is not behind.
        assert!(!diverges(&s(at(3, 10), true), &s(at(5, 1), true)));
        // A version forgotten on either side: existence decides.
        assert!(diverges(&s(None, true), &s(None, false)));
        assert!(diverges(&s(at(3, 10), false), &s(None, true)));
        assert!(!diverges(&s(at(3, 10), true), &s(None, true)));
        assert!(!diverges(&s(None, false), &s(None, false)));
    }
}
