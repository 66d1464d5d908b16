//! The guard: how a sidecar runs a command on a key of a migrating range (see
//! `docs/protocol.md`, "Guarded commands"). The command goes to the range's source inside one
//! script that decides, atomically with the Job's moves, whether it runs there or belongs on the
//! target.
//!
//! KEYS: the range's importing marker, the command's keys, their tombstones, the urgent list.
//! ARGV: the commands to run: their count, then for each its number of arguments and the
//! arguments (the client's command first; the category's TTL rules may add `PEXPIRE`s).

use std::sync::OnceLock;

use bytes::Bytes;

use super::names;

/// The decision part, shared by [`GUARD_SCRIPT`] (which then runs the command) and
/// [`CHECK_SCRIPT`] (which only answers, for commands that cannot run inside a script).
macro_rules! decide {
    () => {
        r"
local function decide()
  local n = (#KEYS - 2) / 2
  if redis.call('EXISTS', KEYS[1]) == 0 then return 'RUN' end
  local present = {}
  for i = 1, n do
    if redis.call('EXISTS', KEYS[1 + n + i]) == 1 then return 'BUSY' end
    if redis.call('EXISTS', KEYS[1 + i]) == 1 then present[#present + 1] = KEYS[1 + i] end
  end
  if #present == n then return 'RUN' end
  if #present == 0 then return 'ASK' end
  -- The queue must take the keys on a full source too (see `oom_exempt!`).
  redis.call('DEL', 'redisfleet:oom-exempt')
  for i = 1, #present, 1000 do
    redis.call('RPUSH', KEYS[#KEYS], unpack(present, i, math.min(i + 999, #present)))
  end
  redis.call('LTRIM', KEYS[#KEYS], -100000, -1)
  return 'TRYAGAIN'
end
"
    };
}

/// Runs the commands of ARGV here when `decide` says `RUN` and answers the first one's reply,
/// else answers `-REDISFLEET-<decision>`.
pub const GUARD_SCRIPT: &str = concat!(
    decide!(),
    r"
local d = decide()
if d ~= 'RUN' then return {err = 'REDISFLEET-' .. d .. ' decided by the redis-fleet guard'} end
",
    run_commands!(),
    "return first\n"
);

/// Only the decision, as a status reply (`+RUN`, `+ASK`, `+BUSY`, `+TRYAGAIN`).
pub const CHECK_SCRIPT: &str = concat!(decide!(), "return {ok = decide()}\n");

/// Arguments a guarded command may have: Lua's `unpack` stops near 8,000 values. Longer
/// commands take the WATCH path ([`CHECK_SCRIPT`]).
pub const MAX_GUARDED_ARGS: usize = 7_000;

/// What the guard decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The command ran on the source; its reply is the guard's reply.
    Ran,
    /// The keys are on the target: run the command there.
    Ask,
    /// A key is in transit: retry in a moment.
    Busy,
    /// Some keys moved, some did not: they were queued for the Job; retry in a moment.
    TryAgain,
}

/// What a reply of [`GUARD_SCRIPT`] means.
pub fn decision(reply: &[u8]) -> Decision {
    if reply.starts_with(b"-REDISFLEET-ASK") {
        Decision::Ask
    } else if reply.starts_with(b"-REDISFLEET-BUSY") {
        Decision::Busy
    } else if reply.starts_with(b"-REDISFLEET-TRYAGAIN") {
        Decision::TryAgain
    } else {
        Decision::Ran
    }
}

/// What a reply of [`CHECK_SCRIPT`] means (`Ran` standing for "run it on the source").
pub fn check_decision(reply: &[u8]) -> Option<Decision> {
    match reply {
        b"+RUN\r\n" => Some(Decision::Ran),
        b"+ASK\r\n" => Some(Decision::Ask),
        b"+BUSY\r\n" => Some(Decision::Busy),
        b"+TRYAGAIN\r\n" => Some(Decision::TryAgain),
        _ => None,
    }
}

/// SHA1 of [`GUARD_SCRIPT`].
pub fn guard_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    super::script_sha(GUARD_SCRIPT, &SHA)
}

/// SHA1 of [`CHECK_SCRIPT`].
pub fn check_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    super::script_sha(CHECK_SCRIPT, &SHA)
}

fn keys_args(marker: &str, keys: &[Bytes], urgent: &str) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(keys.len() * 2 + 2);
    out.push(Bytes::from(marker.to_owned()));
    out.extend(keys.iter().cloned());
    out.extend(keys.iter().map(|k| names::tomb(k)));
    out.push(Bytes::from(urgent.to_owned()));
    out
}

/// `EVALSHA <guard> <n> marker keys… tombs… urgent <commands>` (with `EVAL` and the body
/// instead when `by_body`, after a `NOSCRIPT`). The reply is the first command's.
pub fn guard_command(
    marker: &str,
    keys: &[Bytes],
    urgent: &str,
    commands: &[Vec<Bytes>],
    by_body: bool,
) -> Vec<Bytes> {
    let k = keys_args(marker, keys, urgent);
    let argc: usize = commands.iter().map(|c| c.len() + 1).sum();
    let mut out = Vec::with_capacity(4 + k.len() + argc);
    out.extend(super::script_head(GUARD_SCRIPT, guard_sha(), by_body));
    out.push(Bytes::from(k.len().to_string()));
    out.extend(k);
    super::push_commands(&mut out, commands);
    out
}

/// Arguments the guard needs for `commands` on `keys` (see [`MAX_GUARDED_ARGS`]).
pub fn guarded_args(keys: usize, commands: &[Vec<Bytes>]) -> usize {
    2 * keys + 2 + 1 + commands.iter().map(|c| c.len() + 1).sum::<usize>()
}

/// `EVAL <check> <n> marker keys… tombs… urgent` (sent between WATCH and MULTI).
pub fn check_command(marker: &str, keys: &[Bytes], urgent: &str) -> Vec<Bytes> {
    let k = keys_args(marker, keys, urgent);
    let mut out = Vec::with_capacity(3 + k.len());
    out.push(Bytes::from_static(b"EVAL"));
    out.push(Bytes::from_static(CHECK_SCRIPT.as_bytes()));
    out.push(Bytes::from(k.len().to_string()));
    out.extend(k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(decision(b"-REDISFLEET-ASK\r\n"), Decision::Ask);
        assert_eq!(decision(b"-REDISFLEET-BUSY\r\n"), Decision::Busy);
        assert_eq!(decision(b"-REDISFLEET-TRYAGAIN\r\n"), Decision::TryAgain);
        assert_eq!(decision(b"-WRONGTYPE x\r\n"), Decision::Ran);
        assert_eq!(decision(b"+OK\r\n"), Decision::Ran);
        assert_eq!(check_decision(b"+ASK\r\n"), Some(Decision::Ask));
        assert_eq!(check_decision(b"-ERR\r\n"), None);
    }

    #[test]
    fn command_layout() {
        let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        let cmd = vec![vec![Bytes::from_static(b"MSET"), Bytes::from_static(b"a")]];
        let c = guard_command("m", &keys, "u", &cmd, false);
        let text: Vec<&[u8]> = c.iter().map(|b| b.as_ref()).collect();
        assert_eq!(text[0], b"EVALSHA");
        assert_eq!(text[2], b"6");
        assert_eq!(
            &text[3..9],
            &[
                b"m".as_slice(),
                b"a",
                b"b",
                b"redisfleet:tomb:a",
                b"redisfleet:tomb:b",
                b"u"
            ]
        );
        assert_eq!(&text[9..], &[b"1".as_slice(), b"2", b"MSET", b"a"]);
        assert_eq!(guard_sha().len(), 40);
    }
}
