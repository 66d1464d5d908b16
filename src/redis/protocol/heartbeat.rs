//! Heartbeats: every second each sidecar records, on every instance of its table, the table
//! version it routes by, and learns the policy's fences from the reply. A rebalance Job waits
//! until every live sidecar reports the version that announced a migration; the operator counts
//! live sidecars for `status.sidecars`.
//!
//! Per policy, two keys on each instance hold them, whatever the number of keys in the
//! database: a sorted set (sidecar id → last heartbeat, ms, the server's clock) and a hash
//! (sidecar id → version). The write script drops entries older than [`HEARTBEAT_TTL`]; both
//! scripts use the server's clock, so sidecar clocks do not matter.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionLike;

use super::fence::{self, Fences};
use super::names;
use crate::redis::resp::Frame;

/// How long a heartbeat counts after it was written.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// How often a sidecar writes one.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a heartbeat round vouches for the instances it confirmed: a sidecar hands a reply
/// from an instance to its client only while a round that another instance answered began
/// less than this long ago (else it waits for a new round). A paused instance or a partition
/// can keep a connection open through a failover; the lease bounds how long such a
/// connection's replies can still be believed.
pub const LEASE: Duration = Duration::from_secs(5);

/// How long the operator waits between recording a failover notice and publishing the
/// failover: every sidecar's lease taken before the notice has run out by then (one second
/// of margin for scheduling and clock rates), so no reply of the failed instance is
/// acknowledged once other instances serve its ranges.
pub const NOTICE_WAIT: Duration = Duration::from_secs(LEASE.as_secs() + 1);

/// KEYS: live, versions, fences. ARGV: id, version, ttl (ms). Returns `{now_ms, fences…}`.
pub const WRITE_SCRIPT: &str = concat!(
    oom_exempt!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl), 'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('HDEL', KEYS[2], unpack(dead))
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {now, redis.call('HGETALL', KEYS[3])}
"
);

/// KEYS: live, versions. ARGV: ttl (ms). Returns id, version, id, version, …
pub const READ_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'LIMIT', 0, 100000)
local out = {}
if #live == 0 then return out end
for i = 1, #live, 5000 do
  local part = {}
  for j = i, math.min(i + 4999, #live) do part[#part + 1] = live[j] end
  local versions = redis.call('HMGET', KEYS[2], unpack(part))
  for j, id in ipairs(part) do
    if versions[j] then
      out[#out + 1] = id
      out[#out + 1] = versions[j]
    end
  end
end
return out
";

/// The heartbeat command of sidecar `id` of `policy` at table `version`.
pub fn write_command(policy: &str, id: &str, version: u64) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(WRITE_SCRIPT.as_bytes()),
        Bytes::from_static(b"3"),
        Bytes::from(names::sidecars(policy)),
        Bytes::from(names::sidecar_versions(policy)),
        Bytes::from(names::fences(policy)),
        Bytes::from(id.to_owned()),
        Bytes::from(version.to_string()),
        Bytes::from(HEARTBEAT_TTL.as_millis().to_string()),
    ]
}

/// The fences in a heartbeat reply, or `None` when the reply is not one (an error).
pub fn parse_write_reply(reply: &Frame) -> Option<Fences> {
    match reply {
        Frame::Array(items) if items.len() == 2 => Some(fence::parse(&items[1])),
        _ => None,
    }
}

/// The live heartbeats of `policy` on an instance: sidecar id → table version.
pub async fn read(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
) -> redis::RedisResult<BTreeMap<String, u64>> {
    let flat: Vec<String> = redis::Script::new(READ_SCRIPT)
        .key(names::sidecars(policy))
        .key(names::sidecar_versions(policy))
        .arg(HEARTBEAT_TTL.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(flat
        .chunks_exact(2)
        .filter_map(|pair| Some((pair[0].clone(), pair[1].parse().ok()?)))
        .collect())
}
