//! The data protocol shared by the operator, the sidecars and the rebalance Job: the names of
//! redis-fleet's own keys and connections, fences, heartbeats, the guard that runs commands on
//! migrating ranges, the move scripts, and the scripts that carry a write's result to a replica.
//! `docs/protocol.md` and `docs/replication.md` explain how they fit together and what they
//! guarantee.

/// The first line of every script that writes redis-fleet's own small keys (mover token,
/// fences, heartbeats, the importing marker, the guard's urgent queue): a `DEL` of a key that
/// never exists. Above `maxmemory`, Redis refuses a script's first write that could grow memory
/// (`SET`, `HSET`, `ZADD`, `RPUSH`), but not the later ones of a script that has already
/// written, since it cannot stop a script half-way; `DEL` itself is always allowed. Without
/// it, an instance past `maxmemory` could never be emptied: the rebalance that would relieve it
/// could not claim it, fence it or mark it importing. Scripts that write the application's data
/// (the guard's `RUN` branch, `RESTORE` on a target, the piecewise copy) never use it, so a full
/// instance still answers their writes with `-OOM`. (`#!lua flags=allow-oom` says the same on
/// Redis ≥ 7 only; this works on every version the fleet supports.)
macro_rules! oom_exempt {
    () => {
        "redis.call('DEL', 'redisfleet:oom-exempt')\n"
    };
}

/// Runs the commands of ARGV — their count, then each one's length and arguments — and keeps
/// the first one's reply in `first` (the guard's `RUN` branch and the replicas' write script).
/// An error reply does not stop the others. `PEXPIRE … NX / GT` (the sidecar's TTL rules) runs
/// as Redis 7 runs it, on any version.
macro_rules! run_commands {
    () => {
        r"
local function run(at, len)
  if len == 4 and string.upper(ARGV[at + 1]) == 'PEXPIRE' then
    local flag = string.upper(ARGV[at + 4])
    local key, ms = ARGV[at + 2], tonumber(ARGV[at + 3])
    if flag == 'NX' then
      if redis.call('PTTL', key) == -1 then return redis.call('PEXPIRE', key, ms) end
      return 0
    elseif flag == 'GT' then
      local t = redis.call('PTTL', key)
      if t > 0 and t < ms then return redis.call('PEXPIRE', key, ms) end
      return 0
    end
  end
  return redis.pcall(unpack(ARGV, at + 1, at + len))
end
local first
local at = 2
for c = 1, tonumber(ARGV[1]) do
  local len = tonumber(ARGV[at])
  local r = run(at, len)
  if c == 1 then first = r end
  at = at + len + 1
end
"
    };
}

/// SHA1 of `script`, computed once into `cell`.
fn script_sha(script: &'static str, cell: &'static std::sync::OnceLock<String>) -> &'static str {
    cell.get_or_init(|| redis::Script::new(script).get_hash().to_owned())
}

/// `EVALSHA <sha>`, or `EVAL <body>` when `by_body` (after a `NOSCRIPT`).
fn script_head(script: &'static str, sha: &'static str, by_body: bool) -> [bytes::Bytes; 2] {
    use bytes::Bytes;
    if by_body {
        [
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(script.as_bytes()),
        ]
    } else {
        [
            Bytes::from_static(b"EVALSHA"),
            Bytes::from_static(sha.as_bytes()),
        ]
    }
}

/// Appends `commands` as [`run_commands!`] reads them from ARGV: their count, then each one's
/// length and arguments.
fn push_commands(out: &mut Vec<bytes::Bytes>, commands: &[Vec<bytes::Bytes>]) {
    out.push(bytes::Bytes::from(commands.len().to_string()));
    for c in commands {
        out.push(bytes::Bytes::from(c.len().to_string()));
        out.extend(c.iter().cloned());
    }
}

pub mod fence;
pub mod guard;
pub mod heartbeat;
pub mod mover;
pub mod names;
pub mod replica;
pub mod replica_check;
pub mod roster;
