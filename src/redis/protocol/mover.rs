//! Moving keys from a migration's source to its target (the Job only; see `docs/protocol.md`,
//! "Moving a key"). Every script first checks the *mover token* stored on the instance, so only
//! the newest Job attempt of the newest plan changes anything: a Job whose pod was replaced but
//! whose process lives on is fenced off at its next call.

use std::sync::LazyLock;

use bytes::Bytes;
use redis::aio::ConnectionLike;

use super::names;
use crate::redis::resp::Frame;

/// The prefix of a token check's error reply.
pub const FENCED: &str = "REDISFLEET-FENCED";

macro_rules! check_token {
    () => {
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('REDISFLEET-FENCED a newer rebalance attempt took over') end\n"
    };
}

/// KEYS: mover. ARGV: token. Raises the stored token to ARGV (never lowers it); 1 when the
/// stored token is now ours, 0 when a newer one is there.
pub const RAISE_TOKEN_SCRIPT: &str = concat!(
    oom_exempt!(),
    r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if mine > cur then redis.call('SET', KEYS[1], ARGV[1]); return 1 end
if mine == cur then return 1 end
return 0
"
);

/// KEYS: mover, then (key, tombstone) pairs, then the slot group states to mark (those of the
/// keys' groups not marked yet, maybe none). ARGV: token, largest value to DUMP (bytes, by
/// MEMORY USAGE; 0: any), a budget of DUMP bytes for this call (0: none), and how many group
/// states follow the pairs. Marks the groups moving (a script of theirs no longer runs on the
/// source: `docs/protocol.md`, "Scripts"), then takes each key
/// out of the source: a tombstone left by an earlier attempt is taken as it is, unless the key
/// exists beside it (written after that move ended: the tombstone is stale and is dropped); a
/// present key is renamed to its tombstone. One reply per key: `{'NONE'}`, `{'MOVED', dump, expire_at}`,
/// `{'BIG', type, expire_at}` (copied piece by piece) or `{'LATER'}` (untouched: the call's
/// budget is spent, so a batch of big values never holds more than the budget in memory).
/// `expire_at` is the key's expiry as a Unix time in ms by the source's clock (-1: none): a TTL
/// moves as an absolute time, so the time in transit never extends it.
pub const TAKE_SCRIPT: &str = concat!(
    check_token!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[3] or '0')
local groups = tonumber(ARGV[4] or '0')
if groups > 0 then
  -- Written on a full source too (see `oom_exempt!`); the renames below free nothing and
  -- take nothing.
  redis.call('DEL', 'redisfleet:oom-exempt')
  for i = #KEYS - groups + 1, #KEYS do redis.call('SET', KEYS[i], 'moving', 'NX') end
end
local spent = 0
local out = {}
for i = 2, #KEYS - groups, 2 do
  local key, tomb = KEYS[i], KEYS[i + 1]
  -- PTTL answers -2 for a key that is not there, and removes one whose time ran out
  -- (MEMORY USAGE would size it still, and then nothing could rename it): one call finds the
  -- key and reads its expiry.
  local from, ttl = key, redis.call('PTTL', key)
  if ttl == -2 then from, ttl = tomb, redis.call('PTTL', tomb) end
  if ttl == -2 then
    out[#out + 1] = {'NONE'}
  else
    local size = redis.call('MEMORY', 'USAGE', from) or 0
    if budget > 0 and spent > 0 and spent + size > budget then
      -- A tombstone beside its key is stale (below): dropped as it would be if the key moved.
      if from == key then redis.call('DEL', tomb) end
      out[#out + 1] = {'LATER'}
    else
      if ttl >= 0 then ttl = now + ttl end
      local big = limit > 0 and size > limit
      -- A key beside a tombstone left by an earlier attempt was written after that move
      -- ended (the guard never lets a key in transit be written): the tombstone is stale, the
      -- key replaces it. Without one, RENAMENX alone renames.
      if from == key and redis.call('RENAMENX', key, tomb) == 0 then
        redis.call('RENAME', key, tomb)
      end
      if big then
        out[#out + 1] = {'BIG', redis.call('TYPE', tomb)['ok'], ttl}
      else
        spent = spent + size
        out[#out + 1] = {'MOVED', redis.call('DUMP', tomb), ttl}
      end
    end
  end
end
return out
"
);

/// KEYS: mover, keys. ARGV: token. Deletes the keys (stale copies on a target, before a range
/// is moved there); replies how many existed.
pub const DELETE_SCRIPT: &str = concat!(
    check_token!(),
    "if #KEYS < 2 then return 0 end\nreturn redis.call('DEL', unpack(KEYS, 2))\n"
);

/// KEYS: mover, keys. ARGV: token, then (expiry as a Unix time in ms, 0 for none; dump) per key.
/// Restores each key that is absent on the target. One reply per key: 1 restored, 0 present
/// already (the target's value stays), or the RESTORE error text.
pub const RESTORE_SCRIPT: &str = concat!(
    check_token!(),
    r"
local out = {}
for i = 2, #KEYS do
  local j = i - 1
  local r
  -- Without REPLACE, RESTORE refuses a key that is there (BUSYKEY): the target's value stays.
  if ARGV[2 * j] == '0' then
    r = redis.pcall('RESTORE', KEYS[i], 0, ARGV[2 * j + 1])
  else
    r = redis.pcall('RESTORE', KEYS[i], ARGV[2 * j], ARGV[2 * j + 1], 'ABSTTL')
  end
  -- A target that refuses writes (full, too few replicas) says so before it looks at the
  -- key: a key there is still 'present'.
  if type(r) ~= 'table' or not r.err then
    out[#out + 1] = 1
  elseif string.sub(r.err, 1, 7) == 'BUSYKEY' or redis.call('EXISTS', KEYS[i]) == 1 then
    out[#out + 1] = 0
  else
    out[#out + 1] = r.err
  end
end
return out
"
);

/// KEYS: mover, tombstones. ARGV: token. Deletes the tombstones; replies how many existed.
pub const FINISH_SCRIPT: &str = concat!(
    check_token!(),
    "if #KEYS < 2 then return 0 end\nreturn redis.call('DEL', unpack(KEYS, 2))\n"
);

/// KEYS: mover, marker. ARGV: token, the marker's value. Sets the importing marker.
pub const IMPORT_SCRIPT: &str = concat!(
    oom_exempt!(),
    check_token!(),
    "redis.call('SET', KEYS[2], ARGV[2] or ARGV[1])\nreturn 1\n"
);

/// KEYS: mover, slot group states ([`names::slot_group`], [`names::slot_groups`]). ARGV: token,
/// the state, and a state to leave as it is (`*`: any state; empty: none). Sets the states.
pub const GROUP_STATES_SCRIPT: &str = concat!(
    oom_exempt!(),
    check_token!(),
    r"
for i = 2, #KEYS do
  local now = redis.call('GET', KEYS[i])
  if not (now and (ARGV[3] == '*' or now == ARGV[3])) then redis.call('SET', KEYS[i], ARGV[2]) end
end
return #KEYS - 1
"
);

/// KEYS: mover, roster ([`names::roster`]). ARGV: token, the encoded roster. Writes the roster
/// of a source (`roster.rs`) unless one is there: an earlier attempt's of the plan is as good
/// (no key came to the source since), and a roster never changes while sidecars read it in
/// pieces. Not exempt from `maxmemory`: a full source refuses it, and the sidecars then go
/// without.
pub const ROSTER_SCRIPT: &str = concat!(
    check_token!(),
    "redis.call('SET', KEYS[2], ARGV[2], 'NX')\nreturn 1\n"
);

/// What the importing marker of a move into a range its target serves already holds after the
/// token: should the target die, the source (a draining instance) never held the range's live
/// data, so the operator leaves the marker where it is (`docs/protocol.md`).
pub const TARGET_SERVES: &str = ":target-serves";

/// KEYS: mover, marker. ARGV: token. Deletes the importing marker.
pub const UNMARK_SCRIPT: &str = concat!(check_token!(), "return redis.call('DEL', KEYS[2])\n");

/// KEYS: mover, importing marker, then (key, tombstone) pairs. ARGV: token, the marker's
/// suffix of a move into a range its target served already ([`TARGET_SERVES`]). Gives the
/// keys a move had in transit back to its source, whose target died (the operator only,
/// before it publishes the table that gives the range back; `docs/protocol.md`, "Failover and
/// failback"): raises the mover token to ARGV (never lowers it), so no Job attempt of the move
/// takes a key again, then, if the marker is set and not of a move into a range its target
/// served, renames each tombstone back to its key when the key is absent (the tombstone holds
/// the key's last acknowledged value: the guard refuses every command on a key in transit) and
/// deletes it when the key exists (it is stale: the key was written after an earlier move of
/// it ended). Replies -1 when the marker says the source takes nothing back, else how many
/// keys were renamed back.
pub const GIVE_BACK_SCRIPT: &str = concat!(
    oom_exempt!(),
    r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
local m = redis.call('GET', KEYS[2])
if not m or string.sub(m, -#ARGV[2]) == ARGV[2] then return -1 end
local back = 0
for i = 3, #KEYS, 2 do
  local key, tomb = KEYS[i], KEYS[i + 1]
  if redis.call('EXISTS', tomb) == 1 then
    if redis.call('EXISTS', key) == 1 then
      redis.call('DEL', tomb)
    else
      redis.call('RENAME', tomb, key)
      back = back + 1
    end
  end
end
return back
"
);

/// KEYS: mover, temporary key, key. ARGV: token, persist (1 when the source key had no TTL),
/// the command that sizes the value (`STRLEN`, `LLEN`, …) and the size the assembly's pieces
/// added up to. Renames a value assembled piece by piece into place if the key is still absent (else
/// the target's value is newer) and the assembly is whole: 1 placed, 0 not (the target's
/// value is newer), -1 the assembly is not whole (deleted: a piece was lost with a key the
/// target evicted or expired mid-way), -2 there is no assembly.
pub const PLACE_SCRIPT: &str = concat!(
    check_token!(),
    r"
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('DEL', KEYS[2]); return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
if redis.call(ARGV[3], KEYS[2]) ~= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[2])
  return -1
end
redis.call('RENAME', KEYS[2], KEYS[3])
if ARGV[2] == '1' then redis.call('PERSIST', KEYS[3]) end
return 1
"
);

static RAISE_TOKEN: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(RAISE_TOKEN_SCRIPT));
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TAKE_SCRIPT));
static RESTORE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESTORE_SCRIPT));
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FINISH_SCRIPT));
static IMPORT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(IMPORT_SCRIPT));
static UNMARK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(UNMARK_SCRIPT));
static DELETE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(DELETE_SCRIPT));
static PLACE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PLACE_SCRIPT));
static GROUP_STATES: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(GROUP_STATES_SCRIPT));
static ROSTER: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ROSTER_SCRIPT));
static GIVE_BACK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GIVE_BACK_SCRIPT));

/// What [`Mover::place`] did with a value assembled piece by piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// It is the key's value on the target now.
    Placed,
    /// The target holds the key already (written there since): the assembly was dropped.
    TargetNewer,
    /// The assembly lacked pieces (lost with a key the target evicted or expired mid-way):
    /// dropped; assemble it again.
    Incomplete,
    /// There was no assembly (expired, or evicted whole).
    Missing,
}

/// What the take script answered for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Not on the source (moved already, deleted, expired, or never there).
    None,
    /// Left alone: the call's memory budget was spent before it; take it again later.
    Later,
    /// The serialized value and its expiry (a Unix time in ms by the source's clock; -1:
    /// none).
    Value {
        /// `DUMP` payload.
        dump: Bytes,
        /// Expiry, or -1.
        expire_at: i64,
    },
    /// A value too large for one DUMP: it waits in its tombstone, to be copied piece by piece.
    Big {
        /// `TYPE` of the value.
        kind: String,
        /// Expiry, or -1.
        expire_at: i64,
    },
}

/// Why a move step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// A newer Job attempt raised the mover token: this one must stop.
    #[error("a newer rebalance attempt took over")]
    Fenced,
    /// The server answered an error.
    #[error("{0}")]
    Server(String),
    /// The reply had an unexpected shape.
    #[error("unexpected reply to a move script: {0}")]
    Unexpected(String),
}

impl MoveError {
    fn from_redis(e: &redis::RedisError) -> Self {
        if e.to_string().contains(FENCED) {
            Self::Fenced
        } else {
            Self::Server(e.to_string())
        }
    }
}

/// Interprets one element of the take script's reply.
pub fn parse_taken(reply: &Frame) -> Result<Taken, MoveError> {
    let Frame::Array(items) = reply else {
        return Err(MoveError::Unexpected(format!("{reply:?}")));
    };
    let tag = items.first().and_then(Frame::as_bulk).map(|b| b.as_ref());
    match tag {
        Some(b"NONE") => Ok(Taken::None),
        Some(b"LATER") => Ok(Taken::Later),
        Some(b"MOVED") => match (
            items.get(1).and_then(Frame::as_bulk),
            items.get(2).and_then(Frame::as_integer),
        ) {
            (Some(dump), Some(expire_at)) => Ok(Taken::Value {
                dump: dump.clone(),
                expire_at,
            }),
            _ => Err(MoveError::Unexpected(format!("{reply:?}"))),
        },
        Some(b"BIG") => match (
            items.get(1).and_then(Frame::as_bulk),
            items.get(2).and_then(Frame::as_integer),
        ) {
            (Some(kind), Some(expire_at)) => Ok(Taken::Big {
                kind: String::from_utf8_lossy(kind).into_owned(),
                expire_at,
            }),
            _ => Err(MoveError::Unexpected(format!("{reply:?}"))),
        },
        _ => Err(MoveError::Unexpected(format!("{reply:?}"))),
    }
}

/// One key to restore: name, expiry and payload.
#[derive(Debug, Clone)]
pub struct Restore {
    /// The key.
    pub key: Bytes,
    /// Expiry as a Unix time in ms, 0 for none.
    pub expire_at: u64,
    /// `DUMP` payload.
    pub dump: Bytes,
}

/// What the target did with one restored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Restored.
    Done,
    /// The target had the key already; its value stays.
    Present,
    /// `RESTORE` failed (e.g. a payload the target's version cannot load).
    Failed(String),
}

/// A connection and the policy's mover token, for the move scripts.
#[derive(Clone)]
pub struct Mover {
    /// `<namespace>/<name>` of the policy.
    pub policy: String,
    /// This Job attempt's token.
    pub token: u64,
}

impl std::fmt::Debug for Mover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mover")
            .field("policy", &self.policy)
            .field("token", &self.token)
            .finish()
    }
}

impl Mover {
    /// Gives the keys of `keys` that are in transit (under their tombstones) back to the
    /// source of the move marked by `marker`, raising the mover token to ours first
    /// ([`GIVE_BACK_SCRIPT`]). `None` when the marker is absent or of a move into a range its
    /// target served already (the source takes nothing back), else how many keys came back.
    /// With no keys it only raises the token and reads the marker.
    pub async fn give_back(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        marker: &str,
        keys: &[Bytes],
    ) -> Result<Option<u64>, MoveError> {
        let mut inv = GIVE_BACK.prepare_invoke();
        inv.key(names::mover(&self.policy)).key(marker);
        for k in keys {
            inv.key(k.as_ref()).key(names::tomb(k).as_ref());
        }
        let back: i64 = inv
            .arg(self.token)
            .arg(TARGET_SERVES)
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))?;
        Ok(u64::try_from(back).ok())
    }

    /// Sets slot group states `states` to `state`, leaving those that are `keep` as they are
    /// (`*`: any state, so only absent ones are set; empty: none).
    pub async fn set_group_states(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        states: &[String],
        state: &str,
        keep: &str,
    ) -> Result<(), MoveError> {
        for chunk in states.chunks(1_000) {
            let mut call = GROUP_STATES.prepare_invoke();
            call.key(names::mover(&self.policy));
            for s in chunk {
                call.key(s);
            }
            let _: i64 = call
                .arg(self.token)
                .arg(state)
                .arg(keep)
                .invoke_async(conn)
                .await
                .map_err(|e| MoveError::from_redis(&e))?;
        }
        Ok(())
    }

    /// Writes `roster` (encoded) as `name` ([`ROSTER_SCRIPT`]).
    pub async fn set_roster(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        name: &str,
        roster: &[u8],
    ) -> Result<(), MoveError> {
        let _: i64 = ROSTER
            .key(names::mover(&self.policy))
            .key(name)
            .arg(self.token)
            .arg(roster)
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))?;
        Ok(())
    }

    /// Raises the instance's mover token to ours; `Fenced` when a newer one is there.
    pub async fn claim(&self, conn: &mut (impl ConnectionLike + Send)) -> Result<(), MoveError> {
        let ours: i64 = RAISE_TOKEN
            .key(names::mover(&self.policy))
            .arg(self.token)
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))?;
        if ours == 1 {
            Ok(())
        } else {
            Err(MoveError::Fenced)
        }
    }

    /// Takes `keys` out of the source; one answer per key, in order. Values over `dump_limit`
    /// bytes are left in their tombstones for a piecewise copy; once the DUMPs of this call
    /// passed `budget` bytes, further keys are left alone ([`Taken::Later`]). The keys' slot
    /// groups (from `groups`, a [`names::slot_group_prefix`]) are marked moving first.
    pub async fn take(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        keys: &[Bytes],
        groups: &str,
        dump_limit: u64,
        budget: u64,
    ) -> Result<Vec<Taken>, MoveError> {
        let states = names::slot_group_states_of(groups, keys);
        self.take_marking(conn, keys, &states, dump_limit, budget)
            .await
    }

    /// [`Mover::take`], marking group states `states` moving first: those of `keys`' groups
    /// that may not be marked yet. A state only moves forward (absent → moving → moved), so
    /// one an earlier take marked on the same server needs no second mark; the caller must
    /// know it is the same server (the Job's connections never reconnect).
    pub async fn take_marking(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        keys: &[Bytes],
        states: &[Bytes],
        dump_limit: u64,
        budget: u64,
    ) -> Result<Vec<Taken>, MoveError> {
        let mut call = TAKE.prepare_invoke();
        call.key(names::mover(&self.policy));
        for k in keys {
            call.key(k.as_ref()).key(names::tomb(k).as_ref());
        }
        for g in states {
            call.key(g.as_ref());
        }
        call.arg(self.token)
            .arg(dump_limit)
            .arg(budget)
            .arg(states.len());
        let reply: redis::Value = call
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))?;
        let Frame::Array(items) = value_to_frame(&reply) else {
            return Err(MoveError::Unexpected(format!("{reply:?}")));
        };
        if items.len() != keys.len() {
            return Err(MoveError::Unexpected(format!(
                "{} answers for {} keys",
                items.len(),
                keys.len()
            )));
        }
        items.iter().map(parse_taken).collect()
    }

    /// Restores `items` on the target; one answer per item, in order.
    pub async fn restore(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        items: &[Restore],
    ) -> Result<Vec<Restored>, MoveError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = RESTORE.prepare_invoke();
        call.key(names::mover(&self.policy));
        for r in items {
            call.key(r.key.as_ref());
        }
        call.arg(self.token);
        for r in items {
            call.arg(r.expire_at).arg(r.dump.as_ref());
        }
        let reply: redis::Value = call
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))?;
        let Frame::Array(answers) = value_to_frame(&reply) else {
            return Err(MoveError::Unexpected(format!("{reply:?}")));
        };
        answers
            .iter()
            .map(|a| match a {
                Frame::Integer(1) => Ok(Restored::Done),
                Frame::Integer(0) => Ok(Restored::Present),
                Frame::Bulk(text) => {
                    Ok(Restored::Failed(String::from_utf8_lossy(text).into_owned()))
                }
                other => Err(MoveError::Unexpected(format!("{other:?}"))),
            })
            .collect()
    }

    /// Deletes the tombstones of `keys` on the source.
    pub async fn finish(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        keys: &[Bytes],
    ) -> Result<(), MoveError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut call = FINISH.prepare_invoke();
        call.key(names::mover(&self.policy));
        for k in keys {
            call.key(names::tomb(k).as_ref());
        }
        let _: i64 = call
            .arg(self.token)
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))?;
        Ok(())
    }

    /// Deletes `keys` (stale copies on a target); how many existed.
    pub async fn delete(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        keys: &[Bytes],
    ) -> Result<u64, MoveError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut call = DELETE.prepare_invoke();
        call.key(names::mover(&self.policy));
        for k in keys {
            call.key(k.as_ref());
        }
        call.arg(self.token)
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))
    }

    /// Sets (`on`) or deletes one of a move's markers under the mover token: the importing
    /// marker of its range on its source, or the imported marker on its target;
    /// `target_serves` when the move's target serves the range already (its source is being
    /// emptied: the importing marker says so).
    pub async fn set_marker(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        marker: &str,
        on: bool,
        target_serves: bool,
    ) -> Result<(), MoveError> {
        let script = if on { &*IMPORT } else { &*UNMARK };
        let value = if target_serves {
            format!("{}{TARGET_SERVES}", self.token)
        } else {
            self.token.to_string()
        };
        let _: i64 = script
            .key(names::mover(&self.policy))
            .key(marker)
            .arg(self.token)
            .arg(value)
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))?;
        Ok(())
    }

    /// Renames a value assembled in `temp` to `key` if `key` is still absent on the target
    /// and `temp` is whole: its size by `size` (`STRLEN`, `LLEN`, …) is `expected`, what its
    /// pieces added up to.
    pub async fn place(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        temp: &[u8],
        key: &[u8],
        persist: bool,
        size: &str,
        expected: i64,
    ) -> Result<Placed, MoveError> {
        let placed: i64 = PLACE
            .key(names::mover(&self.policy))
            .key(temp)
            .key(key)
            .arg(self.token)
            .arg(if persist { "1" } else { "0" })
            .arg(size)
            .arg(expected)
            .invoke_async(conn)
            .await
            .map_err(|e| MoveError::from_redis(&e))?;
        match placed {
            1 => Ok(Placed::Placed),
            0 => Ok(Placed::TargetNewer),
            -1 => Ok(Placed::Incomplete),
            -2 => Ok(Placed::Missing),
            other => Err(MoveError::Server(format!(
                "the place script answered {other}"
            ))),
        }
    }
}

/// A `redis` crate value as a RESP frame, so one set of parsers serves the sidecar and the Job.
pub fn value_to_frame(value: &redis::Value) -> Frame {
    match value {
        redis::Value::Nil => Frame::Null,
        redis::Value::Int(i) => Frame::Integer(*i),
        redis::Value::BulkString(b) => Frame::Bulk(Bytes::copy_from_slice(b)),
        redis::Value::SimpleString(s) => Frame::Simple(Bytes::from(s.clone())),
        redis::Value::Okay => Frame::ok(),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            Frame::Array(items.iter().map(value_to_frame).collect())
        }
        redis::Value::ServerError(e) => Frame::Error(Bytes::from(format!(
            "{} {}",
            e.code(),
            e.details().unwrap_or_default()
        ))),
        other => Frame::Error(Bytes::from(format!("unexpected reply type: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(s))
    }

    #[test]
    fn take_replies() {
        assert_eq!(
            parse_taken(&Frame::Array(vec![bulk(b"NONE")])),
            Ok(Taken::None)
        );
        assert_eq!(
            parse_taken(&Frame::Array(vec![
                bulk(b"MOVED"),
                bulk(b"\x00dump"),
                Frame::Integer(1500)
            ])),
            Ok(Taken::Value {
                dump: Bytes::from_static(b"\x00dump"),
                expire_at: 1500
            })
        );
        assert_eq!(
            parse_taken(&Frame::Array(vec![
                bulk(b"BIG"),
                bulk(b"hash"),
                Frame::Integer(-1)
            ])),
            Ok(Taken::Big {
                kind: "hash".into(),
                expire_at: -1
            })
        );
        assert!(parse_taken(&Frame::Integer(1)).is_err());
    }
}
