//! Heartbeats, the keys and scripts: every few seconds each sidecar records, on every instance
//! of its table, the routing table version it uses (`sidecar::heartbeat` writes them). A
//! rebalance Job waits until every live sidecar reports the version that started a migration,
//! so no sidecar still writes by an older table while data moves; the operator counts live
//! sidecars for `status.sidecars`.
//!
//! On each instance two keys hold them, whatever the number of keys in the database:
//! - [`LIVE_KEY`], a sorted set: sidecar id → last heartbeat (ms, the server's clock);
//! - [`VERSIONS_KEY`], a hash: sidecar id → table version.
//!
//! One script writes a heartbeat and drops the entries older than [`HEARTBEAT_TTL`]; another
//! reads the live ones. Both use the server's clock, so sidecar clocks do not matter.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

/// Sorted set of live sidecars (score: last heartbeat, ms).
pub const LIVE_KEY: &str = "redisfleet:sidecars";

/// Hash of the table version of each sidecar.
pub const VERSIONS_KEY: &str = "redisfleet:sidecar-versions";

/// How long a heartbeat counts after it was written.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// KEYS: live, versions. ARGV: id, version, ttl (ms).
pub const WRITE_SCRIPT: &str = r"
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
return 1
";

/// KEYS: live, versions. ARGV: ttl (ms). Returns id, version, id, version, …
pub const READ_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'LIMIT', 0, 5000)
local out = {}
if #live == 0 then return out end
local versions = redis.call('HMGET', KEYS[2], unpack(live))
for i, id in ipairs(live) do
  if versions[i] then
    out[#out + 1] = id
    out[#out + 1] = versions[i]
  end
end
return out
";

/// The heartbeat command of sidecar `id` at table `version`.
pub fn write_command(id: &str, version: u64) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(WRITE_SCRIPT.as_bytes()),
        Bytes::from_static(b"2"),
        Bytes::from_static(LIVE_KEY.as_bytes()),
        Bytes::from_static(VERSIONS_KEY.as_bytes()),
        Bytes::from(id.to_owned()),
        Bytes::from(version.to_string()),
        Bytes::from(HEARTBEAT_TTL.as_millis().to_string()),
    ]
}

/// The live heartbeats on an instance: sidecar id → table version.
pub async fn read(
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<BTreeMap<String, u64>> {
    let flat: Vec<String> = redis::Script::new(READ_SCRIPT)
        .key(LIVE_KEY)
        .key(VERSIONS_KEY)
        .arg(HEARTBEAT_TTL.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(flat
        .chunks_exact(2)
        .filter_map(|pair| Some((pair[0].clone(), pair[1].parse().ok()?)))
        .collect())
}
