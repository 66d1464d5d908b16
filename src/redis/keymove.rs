//! Moving one key from a source instance to a target without losing a write or resurrecting
//! a delete — the step shared by the sidecar (on-access moves during a migration) and the
//! rebalance Job (bulk copy).
//!
//! 1. **Take** (one Lua script on the source, atomic): the key is renamed to a *tombstone*
//!    `redisfleet:tomb:<key>` and a *lease* `redisfleet:lease:<key>` (owner, expiry) is set;
//!    the script returns the key's `DUMP` and remaining `PTTL`. From now on the key is absent
//!    from the source but recoverable from the tombstone if the mover crashes.
//! 2. **Restore** on the target, without REPLACE: `BUSYKEY` means the target already holds a
//!    newer value (written through the new route), which wins.
//! 3. **Finish** (Lua, on the source): the tombstone and lease are deleted if the lease is
//!    still ours.
//!
//! While a lease is held, another mover gets `Busy` and waits: moves of one key are
//! serialised, so an INCR that arrives mid-move is applied after the old value landed, never
//! before it. A tombstone whose lease expired (its mover died) is taken over by the next mover.

use bytes::Bytes;

use super::resp::Frame;

/// Prefix of tombstones of keys being moved.
pub const TOMB_PREFIX: &[u8] = b"redisfleet:tomb:";

/// Prefix of leases of keys being moved.
pub const LEASE_PREFIX: &[u8] = b"redisfleet:lease:";

/// How long a mover owns a key; after that, another mover may take over its tombstone.
pub const LEASE_MS: u64 = 5_000;

/// The take step as a Lua function, shared by the one-key and the many-key scripts.
macro_rules! take_function {
    () => {
        r"
local function take(key, tomb, lease, owner, ms, limit)
  if redis.call('EXISTS', lease) == 1 then return {'BUSY'} end
  local from = key
  if redis.call('EXISTS', tomb) == 1 then from = tomb end
  local ttl = redis.call('PTTL', from)
  if ttl == -2 then return {'NONE'} end
  local big = limit > 0 and (redis.call('MEMORY', 'USAGE', from, 'SAMPLES', 0) or 0) > limit
  local dump = false
  if not big then dump = redis.call('DUMP', from) end
  if from == key then redis.call('RENAME', key, tomb) end
  redis.call('SET', lease, owner, 'PX', ms)
  if big then return {'BIG', redis.call('TYPE', tomb)['ok'], ttl} end
  return {'MOVED', dump, ttl}
end
"
    };
}

/// Takes a key out of the source. KEYS: key, tombstone, lease. ARGV: owner, lease ms, and the
/// largest value (MEMORY USAGE bytes) returned as a DUMP — larger ones answer `BIG` and are
/// copied piece by piece from the tombstone (0: no limit).
pub const TAKE_SCRIPT: &str = concat!(
    take_function!(),
    "return take(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]))\n"
);

/// [`TAKE_SCRIPT`] for many keys in one call (the bulk copy): KEYS are (key, tombstone, lease)
/// triples, the reply is one take reply per key, in order.
pub const TAKE_MANY_SCRIPT: &str = concat!(
    take_function!(),
    "local out = {}\n",
    "for i = 1, #KEYS, 3 do\n",
    "  out[#out + 1] = take(KEYS[i], KEYS[i + 1], KEYS[i + 2], ARGV[1], ARGV[2], tonumber(ARGV[3]))\n",
    "end\n",
    "return out\n"
);

/// Ends a move. KEYS: tombstone, lease. ARGV: owner.
pub const FINISH_SCRIPT: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
";

/// [`FINISH_SCRIPT`] for many keys: KEYS are (tombstone, lease) pairs; replies how many were
/// still ours.
pub const FINISH_MANY_SCRIPT: &str = r"
local done = 0
for i = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[i + 1]) == ARGV[1] then
    redis.call('DEL', KEYS[i], KEYS[i + 1])
    done = done + 1
  end
end
return done
";

/// `redisfleet:tomb:<key>`.
pub fn tomb_key(key: &[u8]) -> Bytes {
    [TOMB_PREFIX, key].concat().into()
}

/// `redisfleet:lease:<key>`.
pub fn lease_key(key: &[u8]) -> Bytes {
    [LEASE_PREFIX, key].concat().into()
}

/// `EVAL <take> 3 key tomb lease owner lease_ms 0` (any size is dumped).
pub fn take_command(key: &Bytes, owner: &str) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(TAKE_SCRIPT.as_bytes()),
        Bytes::from_static(b"3"),
        key.clone(),
        tomb_key(key),
        lease_key(key),
        Bytes::from(owner.to_owned()),
        Bytes::from(LEASE_MS.to_string()),
        Bytes::from_static(b"0"),
    ]
}

/// `EVAL <finish> 2 tomb lease owner`.
pub fn finish_command(key: &[u8], owner: &str) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(FINISH_SCRIPT.as_bytes()),
        Bytes::from_static(b"2"),
        tomb_key(key),
        lease_key(key),
        Bytes::from(owner.to_owned()),
    ]
}

/// What the take script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The key is not on the source (moved already, or never there).
    None,
    /// Another mover holds the lease: wait and retry.
    Busy,
    /// The key's serialized value and remaining TTL in ms (-1: none; -2: expired meanwhile).
    Value {
        /// `DUMP` payload.
        dump: Bytes,
        /// `PTTL`.
        pttl: i64,
    },
    /// A value too large to DUMP at once: now in the tombstone, to be copied piece by piece.
    Big {
        /// `TYPE` of the value.
        kind: String,
        /// `PTTL`.
        pttl: i64,
    },
}

/// Why a move step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// The server answered an error.
    #[error("{0}")]
    Server(String),
    /// The reply had an unexpected shape.
    #[error("unexpected reply to the move script: {0}")]
    Unexpected(String),
    /// The target cannot load the source's DUMP payload (different versions): the type-aware
    /// copy is needed.
    #[error("the target cannot load the source's DUMP payload: {0}")]
    NotPortable(String),
}

/// Interprets the reply of the take script.
pub fn parse_taken(reply: &Frame) -> Result<Taken, MoveError> {
    match reply {
        Frame::Error(e) => Err(MoveError::Server(String::from_utf8_lossy(e).into_owned())),
        Frame::Array(items) => match items.first().and_then(Frame::as_bulk).map(|b| b.as_ref()) {
            Some(b"NONE") => Ok(Taken::None),
            Some(b"BUSY") => Ok(Taken::Busy),
            Some(b"BIG") => match (
                items.get(1).and_then(Frame::as_bulk),
                items.get(2).and_then(Frame::as_integer),
            ) {
                (Some(kind), Some(pttl)) => Ok(Taken::Big {
                    kind: String::from_utf8_lossy(kind).into_owned(),
                    pttl,
                }),
                _ => Err(MoveError::Unexpected(format!("{reply:?}"))),
            },
            Some(b"MOVED") | Some(b"TOMB") => {
                let dump = items.get(1).and_then(Frame::as_bulk).cloned();
                let pttl = items.get(2).and_then(Frame::as_integer);
                match (dump, pttl) {
                    (Some(dump), Some(pttl)) => Ok(Taken::Value { dump, pttl }),
                    // The tombstone expired between EXISTS and DUMP: nothing to restore.
                    (None, _) => Ok(Taken::Value {
                        dump: Bytes::new(),
                        pttl: -2,
                    }),
                    _ => Err(MoveError::Unexpected(format!("{reply:?}"))),
                }
            }
            _ => Err(MoveError::Unexpected(format!("{reply:?}"))),
        },
        other => Err(MoveError::Unexpected(format!("{other:?}"))),
    }
}

/// The RESTORE of a taken value, or `None` when it expired meanwhile (nothing to restore).
pub fn restore_command(key: &Bytes, dump: &Bytes, pttl: i64) -> Option<Vec<Bytes>> {
    if pttl == -2 || pttl == 0 || dump.is_empty() {
        return None;
    }
    let ttl = if pttl < 0 { 0 } else { pttl };
    Some(vec![
        Bytes::from_static(b"RESTORE"),
        key.clone(),
        Bytes::from(ttl.to_string()),
        dump.clone(),
    ])
}

/// What a RESTORE reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The value is on the target.
    Done,
    /// The target already had the key: its (newer) value wins.
    TargetNewer,
}

/// Interprets a RESTORE reply.
pub fn parse_restored(reply: &Frame) -> Result<Restored, MoveError> {
    match reply {
        Frame::Simple(_) => Ok(Restored::Done),
        Frame::Error(e) if e.starts_with(b"BUSYKEY") => Ok(Restored::TargetNewer),
        Frame::Error(e) if e.windows(12).any(|w| w == b"DUMP payload") => Err(
            MoveError::NotPortable(String::from_utf8_lossy(e).into_owned()),
        ),
        Frame::Error(e) => Err(MoveError::Server(String::from_utf8_lossy(e).into_owned())),
        other => Err(MoveError::Unexpected(format!("{other:?}"))),
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
            parse_taken(&Frame::Array(vec![bulk(b"BUSY")])),
            Ok(Taken::Busy)
        );
        assert_eq!(
            parse_taken(&Frame::Array(vec![
                bulk(b"MOVED"),
                bulk(b"\x00dump"),
                Frame::Integer(1500)
            ])),
            Ok(Taken::Value {
                dump: Bytes::from_static(b"\x00dump"),
                pttl: 1500
            })
        );
        assert!(parse_taken(&Frame::Error(Bytes::from_static(b"ERR x"))).is_err());
        assert!(parse_taken(&Frame::Integer(1)).is_err());
    }

    #[test]
    fn restore_carries_the_remaining_ttl() {
        let k = Bytes::from_static(b"k");
        let d = Bytes::from_static(b"payload");
        assert_eq!(
            restore_command(&k, &d, -1).unwrap()[2],
            Bytes::from_static(b"0")
        );
        assert_eq!(
            restore_command(&k, &d, 1234).unwrap()[2],
            Bytes::from_static(b"1234")
        );
        assert_eq!(restore_command(&k, &d, -2), None);
        assert_eq!(parse_restored(&Frame::ok()), Ok(Restored::Done));
        assert_eq!(
            parse_restored(&Frame::Error(Bytes::from_static(
                b"BUSYKEY Target key name already exists."
            ))),
            Ok(Restored::TargetNewer)
        );
        assert!(matches!(
            parse_restored(&Frame::Error(Bytes::from_static(
                b"ERR DUMP payload version or checksum are wrong"
            ))),
            Err(MoveError::NotPortable(_))
        ));
    }

    #[test]
    fn reserved_names() {
        assert_eq!(
            tomb_key(b"user:1"),
            Bytes::from_static(b"redisfleet:tomb:user:1")
        );
        assert_eq!(lease_key(b"k"), Bytes::from_static(b"redisfleet:lease:k"));
        assert!(tomb_key(b"x").starts_with(crate::redis::keys::RESERVED_PREFIX));
    }
}
