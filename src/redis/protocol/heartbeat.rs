//! Heartbeats: every second each sidecar records, on every instance of its table, the table
//! version it routes by and how fast that instance answered it since its last heartbeat, and
//! learns the policy's fences from the reply. A rebalance Job waits until every live sidecar
//! reports the version that announced a migration, and slows its copy when the sidecars see
//! the instances it copies between answer slower (`docs/protocol.md`, "Pacing"); the
//! operator counts live sidecars for `status.sidecars`.
//!
//! Per policy, four keys on each instance hold them, whatever the number of keys in the
//! database: a sorted set (sidecar id → last heartbeat, ms, the server's clock), a hash
//! (sidecar id → version), a hash (sidecar id → [`LatencyReport`], absent when the sidecar
//! sent nothing there) and a hash (sidecar id → the protocol [`FEATURES`] it speaks, stamped
//! with the heartbeat that wrote them). The write script drops entries older than
//! [`HEARTBEAT_TTL`]; the scripts use the server's clock, so sidecar clocks do not matter.

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

/// Slot group marking: the sidecar's guard marks the slot groups of a command it sends to a
/// move's target (`docs/protocol.md`, "Scripts: whole slot groups"). A Job that finds a live
/// sidecar without it opens its plan's group states at `closing`.
pub const GROUPS_FEATURE: &str = "groups";

/// Served-range drains: in a move into a range its target served already, the sidecar runs
/// nothing but reads on the source, and scripts only once their slot groups moved
/// (`docs/protocol.md`, "Draining into a served range"). A Job writes a source's roster only
/// when every live sidecar reports it: an older one could still create keys there.
pub const SERVED_FEATURE: &str = "served";

/// The protocol features a sidecar of this release speaks (space-separated), as its heartbeat
/// reports them.
pub const FEATURES: &str = "groups served";

/// KEYS: live, versions, fences, latencies, features. ARGV: id, version, ttl (ms), latency
/// report (empty: none; `keep`: leave the last one), features. The report and the features are
/// stored with the server's time: the features count only while that time is the id's last
/// heartbeat (a sidecar of an older release beating under the same id moves the heartbeat on,
/// not the features). Each beat also drops two features entries of ids no longer live (an
/// older release's script drops the dead from the sorted set only). Returns `{now_ms, fences…}`.
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
  redis.call('HDEL', KEYS[4], unpack(dead))
  redis.call('HDEL', KEYS[5], unpack(dead))
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[4], ARGV[1])
elseif ARGV[4] ~= 'keep' then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[4] .. ' ' .. now)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[5] .. ' ' .. now)
for _, id in ipairs(redis.call('HRANDFIELD', KEYS[5], 2)) do
  if not redis.call('ZSCORE', KEYS[1], id) then redis.call('HDEL', KEYS[5], id) end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[5], ttl)
return {now, redis.call('HGETALL', KEYS[3])}
"
);

/// KEYS: live, a hash by sidecar id (versions or latencies). ARGV: ttl (ms). Returns id, value,
/// id, value, … of the live sidecars that have a value.
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

/// How fast an instance answered one sidecar between two of its heartbeats: the 99th
/// percentile of its request → reply times (rounded up to the sidecar's bucket, at most a
/// fifth above the true value) and how many replies that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyReport {
    /// The 99th percentile, µs.
    pub p99_micros: u64,
    /// Replies counted.
    pub requests: u64,
}

impl LatencyReport {
    /// `<p99 µs> <requests>`, as the heartbeat stores it.
    pub fn encode(&self) -> String {
        format!("{} {}", self.p99_micros, self.requests)
    }

    /// The report `encode` wrote, or `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (p99, requests) = text.split_once(' ')?;
        Some(Self {
            p99_micros: p99.parse().ok()?,
            requests: requests.parse().ok()?,
        })
    }
}

/// What a heartbeat says of the instance's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// The instance answered these replies since the last report.
    Report(LatencyReport),
    /// The instance answered nothing since the last report.
    Nothing,
    /// Too soon for a new report (an extra round): the last one stands.
    Keep,
}

/// A report as a Job reads it: stamped with the server's time when it was written, so that a
/// reader can tell a new one from one it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StampedReport {
    /// The report.
    pub report: LatencyReport,
    /// When the heartbeat wrote it (ms, the server's clock).
    pub at_ms: u64,
}

impl StampedReport {
    /// `<p99 µs> <requests> <at ms>`, as the heartbeat stores it.
    pub fn parse(text: &str) -> Option<Self> {
        let (report, at) = text.rsplit_once(' ')?;
        Some(Self {
            report: LatencyReport::parse(report)?,
            at_ms: at.parse().ok()?,
        })
    }
}

/// The heartbeat command of sidecar `id` of `policy` at table `version`, with what it saw of
/// the instance's latency since its last heartbeat there.
pub fn write_command(policy: &str, id: &str, version: u64, latency: Latency) -> Vec<Bytes> {
    let latency = match latency {
        Latency::Report(r) => r.encode(),
        Latency::Nothing => String::new(),
        Latency::Keep => "keep".to_owned(),
    };
    vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(WRITE_SCRIPT.as_bytes()),
        Bytes::from_static(b"5"),
        Bytes::from(names::sidecars(policy)),
        Bytes::from(names::sidecar_versions(policy)),
        Bytes::from(names::fences(policy)),
        Bytes::from(names::sidecar_latencies(policy)),
        Bytes::from(names::sidecar_features(policy)),
        Bytes::from(id.to_owned()),
        Bytes::from(version.to_string()),
        Bytes::from(HEARTBEAT_TTL.as_millis().to_string()),
        Bytes::from(latency),
        Bytes::from_static(FEATURES.as_bytes()),
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
    read_live(conn, policy, names::sidecar_versions(policy), |v| {
        v.parse().ok()
    })
    .await
}

/// What the live sidecars of `policy` last reported of an instance's latency (those that sent
/// it nothing since their heartbeat before are not among them): sidecar id → report.
pub async fn read_latencies(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
) -> redis::RedisResult<BTreeMap<String, StampedReport>> {
    read_live(
        conn,
        policy,
        names::sidecar_latencies(policy),
        StampedReport::parse,
    )
    .await
}

/// KEYS: live, features. ARGV: ttl (ms), feature. Returns the live ids whose last heartbeat
/// did not report the feature: no entry, an entry without it, or one stamped with an earlier
/// heartbeat than the id's last (a sidecar of an older release beat since, under the same id).
pub const LIVE_WITHOUT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES', 'LIMIT', 0, 100000)
local out = {}
for i = 1, #live, 2 do
  local id, beat = live[i], tonumber(live[i + 1])
  local entry = redis.call('HGET', KEYS[2], id)
  local has = false
  if entry then
    local words = {}
    for w in string.gmatch(entry, '%S+') do words[#words + 1] = w end
    if tonumber(words[#words]) == beat then
      for j = 1, #words - 1 do
        if words[j] == ARGV[2] then has = true end
      end
    end
  end
  if not has then out[#out + 1] = id end
end
return out
";

/// The live sidecars of `policy` on an instance whose last heartbeat does not report
/// `feature`: those of a release before it (or before features were reported at all), by id.
pub async fn live_without(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
    feature: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut ids: Vec<String> = redis::Script::new(LIVE_WITHOUT_SCRIPT)
        .key(names::sidecars(policy))
        .key(names::sidecar_features(policy))
        .arg(HEARTBEAT_TTL.as_millis() as u64)
        .arg(feature)
        .invoke_async(conn)
        .await?;
    ids.sort_unstable();
    Ok(ids)
}

/// Live sidecar id → `parse` of its entry in hash `by_id`.
async fn read_live<T>(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
    by_id: String,
    parse: impl Fn(&str) -> Option<T>,
) -> redis::RedisResult<BTreeMap<String, T>> {
    let flat: Vec<String> = redis::Script::new(READ_SCRIPT)
        .key(names::sidecars(policy))
        .key(by_id)
        .arg(HEARTBEAT_TTL.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(flat
        .chunks_exact(2)
        .filter_map(|pair| Some((pair[0].clone(), parse(&pair[1])?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_of_this_release_reports_every_feature() {
        let spoken: Vec<&str> = FEATURES.split(' ').collect();
        assert_eq!(spoken, [GROUPS_FEATURE, SERVED_FEATURE]);
    }

    #[test]
    fn a_latency_report_reads_back_and_nothing_else_reads_as_one() {
        let r = LatencyReport {
            p99_micros: 1_250,
            requests: 1_999,
        };
        assert_eq!(r.encode(), "1250 1999");
        assert_eq!(LatencyReport::parse(&r.encode()), Some(r));
        for bad in ["", "1250", "1250 ", " 1999", "x 1", "1 -2", "1 2 3"] {
            assert_eq!(LatencyReport::parse(bad), None, "{bad:?}");
        }
        let stamped = StampedReport::parse("1250 1999 1764763200000").unwrap();
        assert_eq!((stamped.report, stamped.at_ms), (r, 1_764_763_200_000));
        for bad in ["1250 1999", "1250 1999 x", "1250 1999 1 2", "keep"] {
            assert_eq!(StampedReport::parse(bad), None, "{bad:?}");
        }
    }
}
