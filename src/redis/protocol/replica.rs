//! Replicas of a category's data on another instance (issue 15, `docs/replication.md`): the
//! two scripts that carry a write's *result* from the range's writer to its replica, ordered by
//! versions, so that concurrent writers through different sidecars, results delivered late or
//! twice, and a dead writer's results arriving after a promoted replica wrote can never leave
//! the replica with an older state than the writer's.
//!
//! - [`WRITE_SCRIPT`] runs on the writer: it runs the client's command(s), gives the result a
//!   version — *(epoch, counter)* — records that version for each written key, and returns the
//!   reply with each key's state (`DUMP` and `PTTL`). The epoch is, per slot, the highest
//!   routing table version any sidecar wrote that slot here with (a table that routes a slot's
//!   write here makes the instance that slot's writer, so a writer's epoch is never below the
//!   table that made it one, and an instance the slot was taken from never sees a newer one);
//!   the counter is the instance's clock in microseconds, or one more than the last
//!   counter when the clock has not moved on — so it keeps rising across a restart that lost
//!   the counter.
//! - [`APPLY_SCRIPT`] runs on the replica: for each key whose recorded version is older than
//!   the result's, it restores the state (`RESTORE … REPLACE`, the TTL less the time the result
//!   was held, never extended) or deletes the key, and records the version; a result that is
//!   not newer is ignored.
//!
//! The versions recorded *on the writer* matter: when a replica is promoted in an outage it
//! becomes a writer with a larger epoch, and its own writes must outrank a late result of the
//! old writer that arrives afterwards.
//!
//! The sidecar runs them (`sidecar/session/replicated.rs`) for the categories its routing table
//! replicates.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionLike;

use super::names;
use crate::redis::resp::Frame;
use crate::routing::slots::key_slot;

/// Orders the results of writes to one key: a later epoch (a later writer) wins, then a larger
/// counter (a later write of the same writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The table version that made the writer a writer.
    pub epoch: u64,
    /// The writer's counter: one step per write.
    pub counter: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.counter)
    }
}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (e, c) = s
            .split_once(':')
            .ok_or_else(|| format!("version {s:?} is not <epoch>:<counter>"))?;
        let number = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| format!("version {s:?} is not <epoch>:<counter>"))
        };
        Ok(Version {
            epoch: number(e)?,
            counter: number(c)?,
        })
    }
}

/// A key's state on the writer after a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The key does not exist (deleted, expired, never written).
    Absent,
    /// `DUMP` of the key, and its TTL left in milliseconds (`None`: no expiry).
    Present { payload: Bytes, ttl_ms: Option<u64> },
}

/// What [`WRITE_SCRIPT`] returned: the client's reply and the result to replicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The first command's reply, for the client.
    pub reply: Frame,
    /// The version the writer gave this result.
    pub version: Version,
    /// Each written key and its state, in the order the keys were given.
    pub states: Vec<(Bytes, KeyState)>,
}

/// Why [`WRITE_SCRIPT`] returned no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The script failed as a whole (`-NOSCRIPT`, `-OOM` before anything was written, a busy
    /// server): the reply says why.
    #[error("the write script failed: {}", String::from_utf8_lossy(.0))]
    Failed(Bytes),
    /// A reply of another shape than the script's.
    #[error("unexpected reply from the write script: {0}")]
    Malformed(String),
}

/// What [`APPLY_SCRIPT`] did with a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Keys whose state was applied (the result was newer).
    pub applied: u64,
    /// Keys left as they were (the replica had this result or a newer one).
    pub ignored: u64,
    /// Keys whose state could not be written (`-OOM`, a payload this server cannot read); their
    /// version was not recorded, so the same result applies later.
    pub failed: u64,
    /// The first failure's error.
    pub error: Option<Bytes>,
}

impl Applied {
    /// Whether the replica now holds this result or a newer one, for every key.
    pub fn complete(&self) -> bool {
        self.failed == 0
    }
}

/// Forgets a few versions older than [`FORGET_AFTER`] (600 s) in hash `h` — older than the
/// server's clock or the version just recorded, whichever is earlier, so that a replica whose
/// clock runs ahead of its writer's never forgets a fresh one: a result can arrive only so
/// late (the sidecar drops one held longer than a minute), so an older version orders nothing
/// any more, and without this the hashes would keep one entry per key ever written.
macro_rules! forget_old {
    () => {
        r"
local function forget_old(h, newest)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  -- Never beyond the version just recorded: the clocks of writer and replica may disagree.
  if newest < now then now = newest end
  local horizon = now - 600000000
  local sample = redis.call('HRANDFIELD', h, 3, 'WITHVALUES')
  for j = 1, #sample, 2 do
    local c = tonumber(string.match(sample[j + 1], ':(%d+)$'))
    if c and c < horizon then redis.call('HDEL', h, sample[j]) end
  end
end
"
    };
}

/// The writer's next counter (KEYS[2]): its clock in microseconds, or one more than the last
/// counter when the clock has not moved on; returned as a number and as its text.
macro_rules! next_counter {
    () => {
        r"
local function next_counter()
  local t = redis.call('TIME')
  local counter = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  if counter <= last then counter = last + 1 end
  local c = string.format('%.0f', counter)
  redis.call('SET', KEYS[2], c)
  return counter, c
end
"
    };
}

/// The longest a `sync` write's result may take to reach its replica, counted from when the
/// write was sent to its writer, for the write to be acknowledged; later, the client hears
/// `-NOREPLICA` (it ran). The operator relies on it: once it fenced a writer, every result of
/// a write that ran there is on its replica, or was never acknowledged, within this time
/// (`docs/replication.md`, "Failback by swapping roles").
pub const SYNC_RESULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a recorded version is kept (see `forget_old!`); results held longer than a
/// fraction of this are never applied (the sidecar's `MAX_HELD`).
pub const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// KEYS: the writer's epoch, the policy's counter, then for each written key its slot's
/// applied-versions hash and the key. ARGV: the commands, as the guard takes them (their
/// count, then each one's length and arguments; the first one's reply is the client's;
/// `PEXPIRE … NX / GT` of the TTL rules runs on any version, as in the guard), then the
/// sidecar's table version and each written key's slot. Replies `{epoch, counter, reply,
/// (DUMP, PTTL) per key}`.
///
/// The epoch and the counter are written after the commands: on an instance above `maxmemory`
/// a command refused there leaves the script nothing to write, and its error is the reply.
pub const WRITE_SCRIPT: &str = concat!(
    forget_old!(),
    next_counter!(),
    r"
local n = (#KEYS - 2) / 2
local epoch = tonumber(ARGV[#ARGV - n])
for i = 1, n do
  local e = tonumber(redis.call('HGET', KEYS[1], ARGV[#ARGV - n + i]) or '0')
  if e > epoch then epoch = e end
end
local e = string.format('%.0f', epoch)
local slots = {unpack(ARGV, #ARGV - n + 1, #ARGV)}
",
    run_commands!(),
    r"
-- No command (a repair reads the state only): the reply slot must not be a hole.
if first == nil then first = false end
for i = 1, n do
  redis.call('HSET', KEYS[1], slots[i], e)
end
local counter, c = next_counter()
local version = e .. ':' .. c
local out = {e, c, first}
for i = 3, #KEYS, 2 do
  redis.call('HSET', KEYS[i], KEYS[i + 1], version)
  forget_old(KEYS[i], counter)
  out[#out + 1] = redis.call('DUMP', KEYS[i + 1])
  out[#out + 1] = redis.call('PTTL', KEYS[i + 1])
end
return out
"
);

/// Redis' key slot in Lua (CRC16/XMODEM of the hash tag or the key, modulo 16384): the
/// [`CAPTURE_SCRIPT`] names the applied-versions hash of keys the sidecar did not know before.
macro_rules! key_slot_lua {
    () => {
        r"
local crc_table = {}
for i = 0, 255 do
  local c = bit.lshift(i, 8)
  for _ = 1, 8 do
    if bit.band(c, 0x8000) ~= 0 then
      c = bit.bxor(bit.lshift(c, 1), 0x1021)
    else
      c = bit.lshift(c, 1)
    end
    c = bit.band(c, 0xFFFF)
  end
  crc_table[i] = c
end
local function key_slot(k)
  local open = string.find(k, '{', 1, true)
  if open then
    local close = string.find(k, '}', open + 1, true)
    if close and close > open + 1 then k = string.sub(k, open + 1, close - 1) end
  end
  local crc = 0
  for i = 1, #k do
    local index = bit.bxor(bit.rshift(crc, 8), string.byte(k, i))
    crc = bit.band(bit.bxor(bit.lshift(crc, 8), crc_table[index]), 0xFFFF)
  end
  return crc % 16384
end
"
    };
}

/// The write script without commands, run right after an application's script or a
/// transaction (which cannot run inside a script): it reads and versions the states of the
/// keys they declared and of the keys the script's recorder (`sidecar/scripts.rs`) listed in
/// a set, which it deletes. KEYS: the writer's epoch, the policy's counter, the recorded set,
/// then for each declared key its slot's applied-versions hash and the key. ARGV: the policy's
/// applied-versions hash name without its slot (`names::applied_versions_prefix`), the
/// sidecar's table version, then each declared key's slot. Replies `{epoch, counter, false,
/// (DUMP, PTTL) per declared key, (key, DUMP, PTTL) per other recorded key}`.
pub const CAPTURE_SCRIPT: &str = concat!(
    forget_old!(),
    next_counter!(),
    key_slot_lua!(),
    r"
local recorded = redis.call('SMEMBERS', KEYS[3])
local keys, hashes, slots, declared = {}, {}, {}, {}
for i = 4, #KEYS, 2 do
  keys[#keys + 1] = KEYS[i + 1]
  hashes[#hashes + 1] = KEYS[i]
  slots[#slots + 1] = ARGV[2 + #keys]
  declared[KEYS[i + 1]] = true
end
local known = #keys
for _, k in ipairs(recorded) do
  if not declared[k] and string.sub(k, 1, 11) ~= 'redisfleet:' then
    declared[k] = true
    local slot = tostring(key_slot(k))
    keys[#keys + 1] = k
    hashes[#hashes + 1] = ARGV[1] .. slot
    slots[#slots + 1] = slot
  end
end
redis.call('DEL', KEYS[3])
local epoch = tonumber(ARGV[2])
for i = 1, #slots do
  local e = tonumber(redis.call('HGET', KEYS[1], slots[i]) or '0')
  if e > epoch then epoch = e end
end
local e = string.format('%.0f', epoch)
for i = 1, #slots do
  redis.call('HSET', KEYS[1], slots[i], e)
end
local counter, c = next_counter()
local version = e .. ':' .. c
local out = {e, c, false}
for i = 1, #keys do
  redis.call('HSET', hashes[i], keys[i], version)
  forget_old(hashes[i], counter)
  if i > known then out[#out + 1] = keys[i] end
  out[#out + 1] = redis.call('DUMP', keys[i])
  out[#out + 1] = redis.call('PTTL', keys[i])
end
return out
"
);

/// KEYS: for each key its slot's applied-versions hash and the key. ARGV: epoch, counter,
/// milliseconds the result was held since the writer answered, then for each key its `DUMP`
/// payload and `PTTL` (-2: absent, -1: no expiry). Replies `{applied, ignored, failed, first
/// error}`.
pub const APPLY_SCRIPT: &str = concat!(
    forget_old!(),
    r"
local epoch, counter = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = tonumber(ARGV[3])
local version = ARGV[1] .. ':' .. ARGV[2]
local applied, ignored, failed, first = 0, 0, 0, ''
for i = 1, #KEYS, 2 do
  local h, key = KEYS[i], KEYS[i + 1]
  local payload, pttl = ARGV[3 + i], tonumber(ARGV[4 + i])
  local newer = true
  local seen = redis.call('HGET', h, key)
  if seen then
    local e, c = string.match(seen, '^(%d+):(%d+)$')
    e, c = tonumber(e), tonumber(c)
    if e > epoch or (e == epoch and c >= counter) then newer = false end
  end
  if not newer then
    ignored = ignored + 1
  else
    local r
    if pttl == -2 or (pttl >= 0 and pttl <= held) then
      r = redis.pcall('DEL', key)
    else
      local ttl = 0
      if pttl >= 0 then ttl = pttl - held end
      r = redis.pcall('RESTORE', key, ttl, payload, 'REPLACE')
    end
    if type(r) == 'table' and r.err then
      failed = failed + 1
      if first == '' then first = r.err end
    else
      redis.call('HSET', h, key, version)
      forget_old(h, counter)
      applied = applied + 1
    end
  end
end
return {applied, ignored, failed, first}
"
);

/// SHA1 of [`WRITE_SCRIPT`].
pub fn write_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    super::script_sha(WRITE_SCRIPT, &SHA)
}

/// SHA1 of [`APPLY_SCRIPT`].
pub fn apply_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    super::script_sha(APPLY_SCRIPT, &SHA)
}

/// The applied-versions hash and the key, for each key.
fn key_pairs<'a>(policy: &'a str, keys: impl Iterator<Item = &'a Bytes> + 'a) -> Vec<Bytes> {
    keys.flat_map(|k| {
        [
            Bytes::from(names::applied_versions(policy, key_slot(k))),
            k.clone(),
        ]
    })
    .collect()
}

/// `EVALSHA <write> …` (`EVAL` and the body when `by_body`, after a `NOSCRIPT`): runs
/// `commands` on the writer, routed there by table `version`, and returns the state of `keys`
/// — every key the commands may write — with the result's version. The reply is read by
/// [`parse_written`].
pub fn write_command(
    policy: &str,
    version: u64,
    keys: &[Bytes],
    commands: &[Vec<Bytes>],
    by_body: bool,
) -> Vec<Bytes> {
    let pairs = key_pairs(policy, keys.iter());
    let argc: usize = commands.iter().map(|c| c.len() + 1).sum();
    let mut out = Vec::with_capacity(7 + pairs.len() + argc);
    out.extend(super::script_head(WRITE_SCRIPT, write_sha(), by_body));
    out.push(Bytes::from((pairs.len() + 2).to_string()));
    out.push(Bytes::from(names::writer_epoch(policy)));
    out.push(Bytes::from(names::version_counter(policy)));
    out.extend(pairs);
    super::push_commands(&mut out, commands);
    out.push(Bytes::from(version.to_string()));
    out.extend(keys.iter().map(|k| Bytes::from(key_slot(k).to_string())));
    out
}

/// `EVAL <capture> …`: reads and versions the states of `keys` and of the keys listed in set
/// `recorded` (deleted), on the writer routed there by table
/// `version`, right after a script or transaction ran there. By body: it runs after the client's command, too late for a
/// `NOSCRIPT` to send both again. The reply is read by [`parse_captured`].
pub fn capture_command(policy: &str, version: u64, keys: &[Bytes], recorded: &Bytes) -> Vec<Bytes> {
    let pairs = key_pairs(policy, keys.iter());
    let mut out = Vec::with_capacity(10 + pairs.len() + keys.len());
    out.extend(super::script_head(CAPTURE_SCRIPT, "", true));
    out.push(Bytes::from((pairs.len() + 3).to_string()));
    out.push(Bytes::from(names::writer_epoch(policy)));
    out.push(Bytes::from(names::version_counter(policy)));
    out.push(recorded.clone());
    out.extend(pairs);
    out.push(Bytes::from(names::applied_versions_prefix(policy)));
    out.push(Bytes::from(version.to_string()));
    out.extend(keys.iter().map(|k| Bytes::from(key_slot(k).to_string())));
    out
}

/// Reads the reply of a [`capture_command`] for `keys`: their states, then those of the other
/// keys the recorded set listed.
pub fn parse_captured(reply: Frame, keys: &[Bytes]) -> Result<Written, WriteError> {
    let items = match reply {
        Frame::Array(items) => items,
        Frame::Error(e) => return Err(WriteError::Failed(e)),
        other => return Err(WriteError::Malformed(format!("{other:?}"))),
    };
    let known = 3 + 2 * keys.len();
    if items.len() < known || !(items.len() - known).is_multiple_of(3) {
        return Err(WriteError::Malformed(format!(
            "{} items for {} keys",
            items.len(),
            keys.len()
        )));
    }
    let mut items = items;
    let rest = items.split_off(known);
    let mut written = parse_written(Frame::Array(items), keys)?;
    for triple in rest.chunks(3) {
        let [Frame::Bulk(key), payload, ttl] = triple else {
            return Err(WriteError::Malformed(format!("a recorded key: {triple:?}")));
        };
        written
            .states
            .push((key.clone(), key_state(key, payload.clone(), ttl.clone())?));
    }
    Ok(written)
}

/// A key's state from its `DUMP` and `PTTL`.
fn key_state(key: &[u8], payload: Frame, ttl: Frame) -> Result<KeyState, WriteError> {
    match (payload, ttl) {
        (Frame::Null, Frame::Integer(_)) => Ok(KeyState::Absent),
        (Frame::Bulk(payload), Frame::Integer(t)) => Ok(KeyState::Present {
            payload,
            ttl_ms: u64::try_from(t).ok(),
        }),
        other => Err(WriteError::Malformed(format!(
            "the state of {:?}: {other:?}",
            String::from_utf8_lossy(key)
        ))),
    }
}

/// Reads the reply of a [`write_command`] for `keys` (the same keys, in the same order).
pub fn parse_written(reply: Frame, keys: &[Bytes]) -> Result<Written, WriteError> {
    let items = match reply {
        Frame::Array(items) => items,
        Frame::Error(e) => return Err(WriteError::Failed(e)),
        other => return Err(WriteError::Malformed(format!("{other:?}"))),
    };
    if items.len() != 3 + 2 * keys.len() {
        return Err(WriteError::Malformed(format!(
            "{} items for {} keys",
            items.len(),
            keys.len()
        )));
    }
    let mut items = items.into_iter();
    let mut number = |what: &str| -> Result<u64, WriteError> {
        match items.next() {
            Some(Frame::Integer(n)) => u64::try_from(n).ok(),
            Some(Frame::Bulk(b)) => std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()),
            _ => None,
        }
        .ok_or_else(|| WriteError::Malformed(format!("the {what} is not a number")))
    };
    let version = Version {
        epoch: number("epoch")?,
        counter: number("counter")?,
    };
    let reply = items
        .next()
        .ok_or_else(|| WriteError::Malformed("no reply".into()))?;
    let mut states = Vec::with_capacity(keys.len());
    for key in keys {
        let (Some(payload), Some(ttl)) = (items.next(), items.next()) else {
            return Err(WriteError::Malformed("a key's state is missing".into()));
        };
        states.push((key.clone(), key_state(key, payload, ttl)?));
    }
    Ok(Written {
        reply,
        version,
        states,
    })
}

/// `EVALSHA <apply> …` on the replica: applies `written`'s states where they are newer. `held`
/// is the time since the writer answered (taken off every TTL, so a replica's key never
/// outlives the writer's). The reply is read by [`parse_applied`].
pub fn apply_command(policy: &str, written: &Written, held: Duration, by_body: bool) -> Vec<Bytes> {
    let pairs = key_pairs(policy, written.states.iter().map(|(k, _)| k));
    let mut out = Vec::with_capacity(6 + 2 * pairs.len());
    out.extend(super::script_head(APPLY_SCRIPT, apply_sha(), by_body));
    out.push(Bytes::from(pairs.len().to_string()));
    out.extend(pairs);
    out.push(Bytes::from(written.version.epoch.to_string()));
    out.push(Bytes::from(written.version.counter.to_string()));
    let held_ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX);
    out.push(Bytes::from(held_ms.to_string()));
    for (_, state) in &written.states {
        match state {
            KeyState::Absent => {
                out.push(Bytes::new());
                out.push(Bytes::from_static(b"-2"));
            }
            KeyState::Present { payload, ttl_ms } => {
                out.push(payload.clone());
                out.push(match ttl_ms {
                    Some(ms) => Bytes::from(ms.to_string()),
                    None => Bytes::from_static(b"-1"),
                });
            }
        }
    }
    out
}

/// Reads the reply of an [`apply_command`].
pub fn parse_applied(reply: &Frame) -> Result<Applied, String> {
    let Frame::Array(items) = reply else {
        return Err(format!("the apply script answered {reply:?}"));
    };
    let n = |i: usize| match items.get(i) {
        Some(Frame::Integer(v)) => u64::try_from(*v).map_err(|_| format!("negative count {v}")),
        other => Err(format!("the apply script answered {other:?} as a count")),
    };
    let error = match items.get(3) {
        Some(Frame::Bulk(e)) if !e.is_empty() => Some(e.clone()),
        _ => None,
    };
    Ok(Applied {
        applied: n(0)?,
        ignored: n(1)?,
        failed: n(2)?,
        error,
    })
}

/// What a repair pass did ([`repair`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Keys looked at (on the writer, then on the replica; a key on both counts twice).
    pub keys: u64,
    /// Keys whose state the replica took from the writer.
    pub applied: u64,
    /// Keys the replica already had a newer result for (a write raced the pass).
    pub kept: u64,
    /// Keys the replica could not take (`-OOM`, an unreadable payload).
    pub failed: u64,
}

/// Makes `replica` hold what `writer` holds for the keys of `category` in `ranges`: present
/// keys with their value and TTL, and keys only the replica has deleted — the seeding of a new
/// replica, and the repair of one that missed results (an `async` backlog dropped, a replica
/// that was down). Each batch's state is read with a fresh version in one script on the
/// writer, under table `version` (the table that makes `writer` the ranges' writer), and
/// applied by the ordinary rule: a write that races the pass is newer and is never undone, and
/// a newer writer's results (a table after `version` moved the range) are never overwritten.
#[allow(clippy::too_many_arguments)]
pub async fn repair(
    writer: &mut (impl ConnectionLike + Send),
    replica_conn: &mut (impl ConnectionLike + Send),
    resolver: &crate::routing::keyspace::Resolver,
    category: crate::routing::keyspace::CategoryId,
    ranges: &[crate::routing::slots::SlotRange],
    policy: &str,
    version: u64,
) -> redis::RedisResult<Repaired> {
    use crate::redis::keys::RangeScan;
    let mut done = Repaired::default();
    for side in 0..2 {
        let mut scan = RangeScan::new(resolver, category, ranges);
        loop {
            let batch = if side == 0 {
                scan.next_batch(writer).await?
            } else {
                scan.next_batch(replica_conn).await?
            };
            let Some(batch) = batch else { break };
            for chunk in batch.chunks(100) {
                let keys: Vec<Bytes> = chunk.iter().map(|k| Bytes::from(k.clone())).collect();
                let applied = copy_states(writer, replica_conn, policy, version, &keys).await?;
                done.keys += keys.len() as u64;
                done.applied += applied.applied;
                done.kept += applied.ignored;
                done.failed += applied.failed;
            }
        }
    }
    Ok(done)
}

/// Reads the state of `keys` on `writer` with a fresh version (the write script without a
/// command, under table `version`) and applies it on `replica_conn`: the ordinary rule keeps
/// whichever result is newer there.
pub async fn copy_states(
    writer: &mut (impl ConnectionLike + Send),
    replica_conn: &mut (impl ConnectionLike + Send),
    policy: &str,
    version: u64,
    keys: &[Bytes],
) -> redis::RedisResult<Applied> {
    let written = query(writer, write_command(policy, version, keys, &[], true))
        .await
        .and_then(|f| {
            parse_written(f, keys).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the write script",
                    e.to_string(),
                ))
            })
        })?;
    query(
        replica_conn,
        // Applied straight after it was read: nothing held.
        apply_command(policy, &written, Duration::ZERO, true),
    )
    .await
    .and_then(|f| {
        parse_applied(&f)
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "the apply script", e)))
    })
}

/// Sends `args` and reads the reply as a [`Frame`].
async fn query(
    conn: &mut (impl ConnectionLike + Send),
    args: Vec<Bytes>,
) -> redis::RedisResult<Frame> {
    let mut cmd = redis::cmd(std::str::from_utf8(&args[0]).unwrap_or("EVAL"));
    for a in &args[1..] {
        cmd.arg(a.as_ref());
    }
    let value: redis::Value = cmd.query_async(conn).await?;
    Ok(super::mover::value_to_frame(&value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::Bulk(Bytes::from(s.to_owned()))
    }

    #[test]
    fn the_scripts_forget_after_forget_after() {
        let micros = FORGET_AFTER.as_micros().to_string();
        for script in [WRITE_SCRIPT, APPLY_SCRIPT] {
            assert!(script.contains(&format!("now - {micros}")), "{script}");
        }
    }

    #[test]
    fn a_later_writer_outranks_every_write_of_the_one_before() {
        let old = Version {
            epoch: 3,
            counter: 1_000_000,
        };
        let promoted = Version {
            epoch: 10,
            counter: 1,
        };
        assert!(promoted > old);
        assert!(
            Version {
                epoch: 3,
                counter: 7
            } > Version {
                epoch: 3,
                counter: 6
            }
        );
        let v: Version = "10:42".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v,
            Version {
                epoch: 10,
                counter: 42
            }
        );
        assert_eq!(v.to_string(), "10:42");
        for bad in ["10", "10:", ":4", "a:b", "-1:2", "1:2:3"] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn write_replies_are_read_key_by_key() {
        let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        let reply = Frame::Array(vec![
            bulk("7"),
            Frame::Integer(12),
            Frame::ok(),
            bulk("\x00payload"),
            Frame::Integer(1500),
            Frame::Null,
            Frame::Integer(-2),
        ]);
        let w = parse_written(reply, &keys).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            w.version,
            Version {
                epoch: 7,
                counter: 12
            }
        );
        assert_eq!(w.reply, Frame::ok());
        assert_eq!(
            w.states,
            vec![
                (
                    keys[0].clone(),
                    KeyState::Present {
                        payload: Bytes::from_static(b"\x00payload"),
                        ttl_ms: Some(1500)
                    }
                ),
                (keys[1].clone(), KeyState::Absent),
            ]
        );
        // No expiry is -1.
        let reply = Frame::Array(vec![
            bulk("7"),
            Frame::Integer(13),
            Frame::Integer(1),
            bulk("p"),
            Frame::Integer(-1),
        ]);
        let w = parse_written(reply, &keys[..1]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            &w.states[0].1,
            KeyState::Present { ttl_ms: None, .. }
        ));
    }

    #[test]
    fn refused_and_malformed_write_replies_are_errors() {
        let keys = [Bytes::from_static(b"a")];
        assert!(matches!(
            parse_written(Frame::Error(Bytes::from_static(b"NOSCRIPT x")), &keys),
            Err(WriteError::Failed(_))
        ));
        // Fewer states than keys, a non-number version, a reply that is no array.
        for bad in [
            Frame::Array(vec![bulk("7"), Frame::Integer(1), Frame::ok()]),
            Frame::Array(vec![
                bulk("x"),
                Frame::Integer(1),
                Frame::ok(),
                Frame::Null,
                Frame::Integer(-2),
            ]),
            Frame::ok(),
        ] {
            assert!(
                matches!(
                    parse_written(bad.clone(), &keys),
                    Err(WriteError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_apply_carries_each_state_and_the_time_held() {
        let w = Written {
            reply: Frame::ok(),
            version: Version {
                epoch: 4,
                counter: 9,
            },
            states: vec![
                (
                    Bytes::from_static(b"user:{1}"),
                    KeyState::Present {
                        payload: Bytes::from_static(b"P"),
                        ttl_ms: None,
                    },
                ),
                (Bytes::from_static(b"user:{1}:x"), KeyState::Absent),
            ],
        };
        let cmd = apply_command("a/b", &w, Duration::from_millis(25), false);
        let text: Vec<String> = cmd
            .iter()
            .skip(2)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let hash = names::applied_versions("a/b", key_slot(b"{1}"));
        assert_eq!(
            text,
            [
                "4",
                &hash,
                "user:{1}",
                &hash,
                "user:{1}:x",
                "4",
                "9",
                "25",
                "P",
                "-1",
                "",
                "-2"
            ]
        );
        assert_eq!(cmd[0], "EVALSHA");
        assert_eq!(cmd[1], apply_sha());
        let applied = parse_applied(&Frame::Array(vec![
            Frame::Integer(1),
            Frame::Integer(0),
            Frame::Integer(1),
            bulk("OOM command not allowed"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!applied.complete());
        assert_eq!(
            applied.error.as_deref(),
            Some(&b"OOM command not allowed"[..])
        );
    }
}
