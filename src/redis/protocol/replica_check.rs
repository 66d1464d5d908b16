//! The divergence check of a seeded replica (`docs/replication.md`, "The check"): what the
//! replica missed — an `async` result dropped, an apply refused (`-OOM`) or lost with a
//! replica that was briefly gone, a `sync` write answered `-NOREPLICA` — is found by comparing
//! each key's recorded result version and existence on the writer and the replica, looked at
//! again after a pause (a result on its way is not a divergence), and repaired by copying the
//! writer's state with a fresh version ([`replica::copy_states`]), which never undoes a write
//! that races it.
//!
//! What it cannot see: a value that differs while both sides exist and neither still records
//! a recent version for the key (versions are forgotten after [`replica::FORGET_AFTER`]); and
//! it never deletes a replica's key that the writer lacks without a record of its delete (a
//! writer that lost its data must not empty its replica). Comparing
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

/// KEYS: for each key its slot's applied-versions hash and the key. Replies the server's
/// clock (microseconds), then per key the version recorded for it (nil when none) and whether
/// it exists. Reads only.
pub const STANDING_SCRIPT: &str = r"
local t = redis.call('TIME')
local out = {string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))}
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

/// Whether the replica misses what the writer holds for a key (`writer_now`: the writer's
/// clock in microseconds, which its version counters follow):
/// - both record a version: the writer's is newer;
/// - only the writer does: it is too recent for the replica to have forgotten its own (half
///   of [`replica::FORGET_AFTER`]), or it is a delete the replica does not show;
/// - neither does: the writer has the key and the replica not. The other way round is no
///   divergence: a key the writer lacks without any record of a delete is one it lost (an
///   eviction, which is not replicated, or its data — `docs/replication.md`), and copying that
///   absence would delete the replica's copy.
pub fn diverges(writer: &Standing, replica: &Standing, writer_now: u64) -> bool {
    let recent = |v: Version| {
        let horizon = u64::try_from(replica::FORGET_AFTER.as_micros() / 2).unwrap_or(u64::MAX);
        v.counter.saturating_add(horizon) > writer_now
    };
    match (writer.version, replica.version) {
        (Some(w), Some(r)) => w > r,
        (Some(w), None) => recent(w) || (!writer.exists && replica.exists),
        (None, _) => writer.exists && !replica.exists,
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
) -> redis::RedisResult<(u64, Vec<Standing>)> {
    let script = redis::Script::new(STANDING_SCRIPT);
    let mut invocation = script.prepare_invoke();
    for k in keys {
        invocation.key(names::applied_versions(policy, key_slot(k)));
        invocation.key(k.as_slice());
    }
    let values: Vec<redis::Value> = invocation.invoke_async(conn).await?;
    let now = match values.first() {
        Some(redis::Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let mut out = Vec::with_capacity(keys.len());
    for pair in values.get(1..).unwrap_or_default().chunks(2) {
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
    Ok((now, out))
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
        let (now, on_writer) = standings(writer, policy, chunk).await?;
        let (_, on_replica) = standings(replica_conn, policy, chunk).await?;
        for (i, key) in chunk.iter().enumerate() {
            if diverges(&on_writer[i], &on_replica[i], now) {
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
        let minute = 60_000_000;
        let now = 100 * minute;
        let (old, fresh) = (now - 6 * minute, now - minute);
        // Versions on both sides decide alone.
        assert!(diverges(&s(at(3, fresh), true), &s(at(3, old), true), now));
        assert!(diverges(&s(at(4, 1), false), &s(at(3, fresh), true), now));
        assert!(!diverges(&s(at(3, old), true), &s(at(3, old), true), now));
        // A replica ahead (a newer writer's result, the range moved since) is not behind.
        assert!(!diverges(&s(at(3, fresh), true), &s(at(5, 1), true), now));
        // Only the writer remembers: a recent result the replica cannot have forgotten is
        // missing there (a refused apply); an old one may be forgotten, unless it is a delete
        // the replica does not show.
        assert!(diverges(&s(at(3, fresh), true), &s(None, true), now));
        assert!(!diverges(&s(at(3, old), true), &s(None, true), now));
        assert!(diverges(&s(at(3, old), false), &s(None, true), now));
        // Neither remembers: a key the replica lacks is missing; a key only the replica has
        // is kept (the writer lost it without a delete: copying that would delete the copy).
        assert!(diverges(&s(None, true), &s(None, false), now));
        assert!(!diverges(&s(None, false), &s(None, true), now));
        assert!(!diverges(&s(None, false), &s(None, false), now));
        assert!(!diverges(&s(None, false), &s(at(3, old), true), now));
    }
}
