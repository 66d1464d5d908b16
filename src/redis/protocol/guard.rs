//! The guard: how a sidecar runs a command on a key of a migrating range (see
//! `docs/protocol.md`, "Guarded commands"). The command goes to the range's source inside one
//! script that decides, atomically with the Job's moves, whether it runs there or belongs on the
//! target.
//!
//! KEYS: the range's importing marker, the command's keys, their tombstones, their slot groups'
//! state keys, the urgent list ([`SCRIPT_CHECK_SCRIPT`] adds the plan's group state and the
//! urgent group list). ARGV: the commands to run: their count, then for each its number of
//! arguments and the arguments (the client's command first; the category's TTL rules may add
//! `PEXPIRE`s).

use std::sync::OnceLock;

use bytes::Bytes;

use super::mover::TARGET_SERVES;
use super::names;

/// The decision part, shared by [`GUARD_SCRIPT`] (which then runs the command), [`CHECK_SCRIPT`]
/// (which only answers, for commands that cannot run inside a script) and
/// [`SCRIPT_CHECK_SCRIPT`]. A command sent to the target (`ASK`) marks its keys' slot groups
/// moving when `mark` is true: the target may now hold keys of them, so a script of those groups
/// must not run on the source (`docs/protocol.md`, "Scripts"). A read ([`GUARD_READ_SCRIPT`])
/// creates nothing there and marks nothing: a cache miss would otherwise make the next script
/// of its group wait for a walk of the source.
///
/// In a move into a range its target served already (the marker ends with
/// [`TARGET_SERVES`]) the target may hold a newer copy of a key the source holds (the fleet's,
/// written before the drain, by a script the target ran, or while pods wrote the legacy Redis
/// straight), and the move keeps the target's: nothing but a read runs on the source there,
/// and a read only once the sidecar found the target without its keys (`seen` is
/// [`Seen::Lacked`]); with nothing seen it answers `CHECK` ([`Decision::Check`]). Anything
/// else with keys on the source queues them for the Job, which moves them keeping the target's
/// copy where there is one (`docs/protocol.md`, "Draining into a served range"). `seen`: `?`,
/// `lacked`, `held` (a guarded command, [`Seen`]), `tx` (a transaction's check), `script` (a
/// script's).
macro_rules! decide {
    () => {
        r"
local function decide(n, urgent, mark, seen)
  local marker = redis.call('GET', KEYS[1])
  if not marker then return 'RUN' end
  local present = {}
  for i = 1, n do
    if redis.call('EXISTS', KEYS[1 + n + i]) == 1 then return 'BUSY' end
    if redis.call('EXISTS', KEYS[1 + i]) == 1 then present[#present + 1] = KEYS[1 + i] end
  end
  if #present == n then
    if n == 0 or string.sub(marker, -14) ~= ':target-serves' then return 'RUN' end
    if not mark and seen == 'lacked' then return 'RUN' end
    if not mark and seen == '?' then return 'CHECK' end
  end
  -- The groups and the queue must be written on a full source too (see `oom_exempt!`).
  redis.call('DEL', 'redisfleet:oom-exempt')
  if #present == 0 then
    if mark then
      for i = 1, n do redis.call('SET', KEYS[1 + 2 * n + i], 'moving', 'NX') end
    end
    return 'ASK'
  end
  for i = 1, #present, 1000 do
    redis.call('RPUSH', urgent, unpack(present, i, math.min(i + 999, #present)))
  end
  redis.call('LTRIM', urgent, -100000, -1)
  return 'TRYAGAIN'
end
"
    };
}

/// The guard proper: `decide`, then the commands of ARGV when it says `RUN`.
macro_rules! guard_script {
    ($mark:literal) => {
        concat!(
            decide!(),
            "local d = decide((#KEYS - 2) / 3, KEYS[#KEYS], ",
            $mark,
            r", ARGV[#ARGV])
if d ~= 'RUN' then return {err = 'REDISFLEET-' .. d .. ' decided by the redis-fleet guard'} end
",
            run_commands!(),
            "return first\n"
        )
    };
}

/// Runs the commands of ARGV here when `decide` says `RUN` and answers the first one's reply,
/// else answers `-REDISFLEET-<decision>`; an `ASK` marks the keys' slot groups moving.
pub const GUARD_SCRIPT: &str = guard_script!("true");

/// [`GUARD_SCRIPT`] for a command that creates no key ([`guard_command`]'s `read`): its `ASK`
/// marks no slot group.
pub const GUARD_READ_SCRIPT: &str = guard_script!("false");

/// Only the decision, as a status reply (`+RUN`, `+ASK`, `+BUSY`, `+TRYAGAIN`).
pub const CHECK_SCRIPT: &str = concat!(
    decide!(),
    "return {ok = decide((#KEYS - 2) / 3, KEYS[#KEYS], true, 'tx')}\n"
);

/// The decision for a script (or a transaction that holds one), which may touch keys it does
/// not declare, in its declared keys' slot groups: it runs on the source while none of its
/// groups has been touched by the move (every key of them is still there), on the target
/// once all of them moved (none can come back), and otherwise asks the Job to move its groups
/// whole (the urgent group list) and answers `+TRYAGAIN-GROUPS` ([`WAIT_FOR_GROUPS`]). In a
/// move into a range its target served already (the importing marker ends with ARGV[1]) it
/// never runs on the source, whose copies the target's may be newer than: every group counts
/// as touched, and once they moved the declared keys must have left too (a pod writing the
/// legacy Redis straight may write one there again). A plan whose Job keeps no group states
/// (an older version's: the plan's own state is absent) decides by the keys. KEYS: as
/// [`CHECK_SCRIPT`], then the plan's group state and the urgent group list.
pub const SCRIPT_CHECK_SCRIPT: &str = concat!(
    decide!(),
    r"
local n = (#KEYS - 4) / 3
local marker = redis.call('GET', KEYS[1])
if not marker then return {ok = 'RUN'} end
local served = string.sub(marker, -#ARGV[1]) == ARGV[1]
for i = 1, n do
  if redis.call('EXISTS', KEYS[1 + n + i]) == 1 then return {ok = 'BUSY'} end
end
local all = redis.call('GET', KEYS[3 * n + 3])
if not all then return {ok = decide(n, KEYS[3 * n + 2], true, 'script')} end
-- Served: on the target once the groups moved, and the declared keys too (a pod writing the
-- legacy Redis straight may have written one there again).
if all == 'moved' then
  if served then return {ok = decide(n, KEYS[3 * n + 2], true, 'script')} end
  return {ok = 'ASK'}
end
if served then all = 'closing' end
local untouched, moved, wait, asked = 0, 0, {}, {}
for i = 1, n do
  local group = KEYS[1 + 2 * n + i]
  local state = redis.call('GET', group)
  if state == 'moved' then
    moved = moved + 1
  else
    if not state and all ~= 'closing' then untouched = untouched + 1 end
    if not asked[group] then
      asked[group] = true
      wait[#wait + 1] = group
    end
  end
end
if untouched == n then return {ok = 'RUN'} end
if moved == n then
  if served then return {ok = decide(n, KEYS[3 * n + 2], true, 'script')} end
  return {ok = 'ASK'}
end
redis.call('DEL', 'redisfleet:oom-exempt')
for i = 1, #wait, 1000 do
  redis.call('RPUSH', KEYS[3 * n + 4], unpack(wait, i, math.min(i + 999, #wait)))
end
redis.call('LTRIM', KEYS[3 * n + 4], -10000, -1)
return {ok = 'TRYAGAIN-GROUPS'}
"
);

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
    /// A read in a move into a range its target served already, whose keys are all on the
    /// source: ask the target whether it holds them, then the guard again with what it said
    /// ([`Seen`]).
    Check,
}

/// What the sidecar found on the target of a move into a range it served already, before it
/// sent a read through the guard (see [`decide!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The target was not asked.
    Unknown,
    /// The target held none of the keys: the source's copies are the live ones.
    Lacked,
    /// The target held some of them: its copies are newer; the source's must go first.
    Held,
}

impl Seen {
    fn arg(self) -> &'static [u8] {
        match self {
            Seen::Unknown => b"?",
            Seen::Lacked => b"lacked",
            Seen::Held => b"held",
        }
    }
}

/// What a reply of [`GUARD_SCRIPT`] means.
pub fn decision(reply: &[u8]) -> Decision {
    if reply.starts_with(b"-REDISFLEET-ASK") {
        Decision::Ask
    } else if reply.starts_with(b"-REDISFLEET-BUSY") {
        Decision::Busy
    } else if reply.starts_with(b"-REDISFLEET-TRYAGAIN") {
        Decision::TryAgain
    } else if reply.starts_with(b"-REDISFLEET-CHECK") {
        Decision::Check
    } else {
        Decision::Ran
    }
}

/// [`SCRIPT_CHECK_SCRIPT`]'s `TryAgain` when the script waits for its slot groups to move
/// whole (not for keys split by a move, as in a move into a served range).
pub const WAIT_FOR_GROUPS: &[u8] = b"+TRYAGAIN-GROUPS\r\n";

/// What a reply of [`CHECK_SCRIPT`] or [`SCRIPT_CHECK_SCRIPT`] means (`Ran` standing for "run
/// it on the source").
pub fn check_decision(reply: &[u8]) -> Option<Decision> {
    match reply {
        b"+RUN\r\n" => Some(Decision::Ran),
        b"+ASK\r\n" => Some(Decision::Ask),
        b"+BUSY\r\n" => Some(Decision::Busy),
        b"+TRYAGAIN\r\n" => Some(Decision::TryAgain),
        WAIT_FOR_GROUPS => Some(Decision::TryAgain),
        _ => None,
    }
}

/// SHA1 of [`GUARD_SCRIPT`].
pub fn guard_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    super::script_sha(GUARD_SCRIPT, &SHA)
}

/// SHA1 of [`GUARD_READ_SCRIPT`].
pub fn guard_read_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    super::script_sha(GUARD_READ_SCRIPT, &SHA)
}

/// SHA1 of [`CHECK_SCRIPT`].
pub fn check_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    super::script_sha(CHECK_SCRIPT, &SHA)
}

/// The names the guard of one migrating range works with.
#[derive(Debug, Clone, Copy)]
pub struct RangeNames<'a> {
    /// The range's importing marker.
    pub marker: &'a str,
    /// [`names::slot_group_prefix`] of the range's plan.
    pub groups: &'a str,
    /// The policy's urgent list ([`names::urgent`]).
    pub urgent: &'a str,
    /// The policy's urgent group list ([`names::urgent_groups`]).
    pub urgent_groups: &'a str,
}

fn keys_args(range: RangeNames<'_>, keys: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(keys.len() * 3 + 2);
    out.push(Bytes::from(range.marker.to_owned()));
    out.extend(keys.iter().cloned());
    out.extend(keys.iter().map(|k| names::tomb(k)));
    out.extend(
        keys.iter()
            .map(|k| names::slot_group_of_key(range.groups, k)),
    );
    out.push(Bytes::from(range.urgent.to_owned()));
    out
}

/// `EVALSHA <guard> <n> marker keys… tombs… groups… urgent <commands> <seen>` (with `EVAL`
/// and the body instead when `by_body`, after a `NOSCRIPT`). The reply is the first command's.
/// `read`: the commands change nothing ([`GUARD_READ_SCRIPT`]); `seen`: what the target said
/// of the keys ([`Seen`]).
pub fn guard_command(
    range: RangeNames<'_>,
    keys: &[Bytes],
    commands: &[Vec<Bytes>],
    by_body: bool,
    read: bool,
    seen: Seen,
) -> Vec<Bytes> {
    let k = keys_args(range, keys);
    let argc: usize = commands.iter().map(|c| c.len() + 1).sum();
    let mut out = Vec::with_capacity(5 + k.len() + argc);
    out.extend(if read {
        super::script_head(GUARD_READ_SCRIPT, guard_read_sha(), by_body)
    } else {
        super::script_head(GUARD_SCRIPT, guard_sha(), by_body)
    });
    out.push(Bytes::from(k.len().to_string()));
    out.extend(k);
    super::push_commands(&mut out, commands);
    out.push(Bytes::from_static(seen.arg()));
    out
}

/// Arguments the guard needs for `commands` on `keys` (see [`MAX_GUARDED_ARGS`]).
pub fn guarded_args(keys: usize, commands: &[Vec<Bytes>]) -> usize {
    3 * keys + 2 + 2 + commands.iter().map(|c| c.len() + 1).sum::<usize>()
}

/// `EVAL <check> <n> marker keys… tombs… groups… urgent` (sent between WATCH and MULTI).
pub fn check_command(range: RangeNames<'_>, keys: &[Bytes]) -> Vec<Bytes> {
    let k = keys_args(range, keys);
    let mut out = Vec::with_capacity(3 + k.len());
    out.push(Bytes::from_static(b"EVAL"));
    out.push(Bytes::from_static(CHECK_SCRIPT.as_bytes()));
    out.push(Bytes::from(k.len().to_string()));
    out.extend(k);
    out
}

/// `EVAL <script check> <n> marker keys… tombs… groups… urgent all urgent-groups <suffix>`
/// (sent between WATCH and MULTI, for a script).
pub fn script_check_command(range: RangeNames<'_>, keys: &[Bytes]) -> Vec<Bytes> {
    let mut k = keys_args(range, keys);
    k.push(Bytes::from(names::slot_groups_in(range.groups)));
    k.push(Bytes::from(range.urgent_groups.to_owned()));
    let mut out = Vec::with_capacity(4 + k.len());
    out.push(Bytes::from_static(b"EVAL"));
    out.push(Bytes::from_static(SCRIPT_CHECK_SCRIPT.as_bytes()));
    out.push(Bytes::from(k.len().to_string()));
    out.extend(k);
    out.push(Bytes::from_static(TARGET_SERVES.as_bytes()));
    out
}

/// The check a command sends between WATCH and MULTI: [`script_check_command`] for a script
/// (or a transaction holding one), else [`check_command`].
pub fn decision_command(range: RangeNames<'_>, keys: &[Bytes], script: bool) -> Vec<Bytes> {
    if script {
        script_check_command(range, keys)
    } else {
        check_command(range, keys)
    }
}

/// What a script's WATCH must cover besides its keys and their tombstones: the state keys of
/// their slot groups and the plan's own (a change of any is a move the script must see).
pub fn script_watch_keys(range: RangeNames<'_>, keys: &[Bytes]) -> Vec<Bytes> {
    let mut out = script_groups(range, keys);
    out.push(Bytes::from(names::slot_groups_in(range.groups)));
    out
}

/// The state keys of the slot groups of `keys`, each once.
pub fn script_groups(range: RangeNames<'_>, keys: &[Bytes]) -> Vec<Bytes> {
    names::slot_group_states_of(range.groups, keys)
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
        assert_eq!(decision(b"-REDISFLEET-CHECK x\r\n"), Decision::Check);
        assert_eq!(check_decision(b"+ASK\r\n"), Some(Decision::Ask));
        assert_eq!(check_decision(b"-ERR\r\n"), None);
        assert_eq!(check_decision(WAIT_FOR_GROUPS), Some(Decision::TryAgain));
    }

    #[test]
    fn the_scripts_read_the_markers_suffix() {
        let served = format!(
            "string.sub(marker, -{}) ~= '{TARGET_SERVES}'",
            TARGET_SERVES.len()
        );
        for script in [
            GUARD_SCRIPT,
            GUARD_READ_SCRIPT,
            CHECK_SCRIPT,
            SCRIPT_CHECK_SCRIPT,
        ] {
            assert!(script.contains(&served), "{script}");
        }
    }

    #[test]
    fn command_layout() {
        let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        let cmd = vec![vec![Bytes::from_static(b"MSET"), Bytes::from_static(b"a")]];
        let range = RangeNames {
            marker: "m",
            groups: "g:",
            urgent: "u",
            urgent_groups: "ug",
        };
        let c = guard_command(range, &keys, &cmd, false, false, Seen::Unknown);
        let text: Vec<&[u8]> = c.iter().map(|b| b.as_ref()).collect();
        assert_eq!(text[0], b"EVALSHA");
        assert_eq!(text[1], guard_sha().as_bytes());
        let read = guard_command(range, &keys, &cmd, false, true, Seen::Unknown);
        assert_eq!(read[1].as_ref(), guard_read_sha().as_bytes());
        assert_ne!(guard_sha(), guard_read_sha());
        assert_eq!(&read[2..], &c[2..], "the same keys and arguments");
        assert_eq!(text[2], b"8");
        // Slot 15495 ("a") and 3300 ("b"), 16 slots a group.
        assert_eq!(
            &text[3..11],
            &[
                b"m".as_slice(),
                b"a",
                b"b",
                b"redisfleet:tomb:a",
                b"redisfleet:tomb:b",
                b"g:968",
                b"g:206",
                b"u"
            ]
        );
        assert_eq!(&text[11..], &[b"1".as_slice(), b"2", b"MSET", b"a", b"?"]);
        assert_eq!(guarded_args(2, &cmd), c.len() - 3);
        let s = script_check_command(range, &keys);
        let text: Vec<&[u8]> = s.iter().map(|b| b.as_ref()).collect();
        assert_eq!(text[2], b"10");
        assert_eq!(
            &text[11..],
            &[b"g:all".as_slice(), b"ug", b":target-serves"]
        );
        assert_eq!(
            script_watch_keys(range, &[keys[0].clone(), keys[0].clone()]),
            vec![Bytes::from_static(b"g:968"), Bytes::from_static(b"g:all")]
        );
        assert_eq!(guard_sha().len(), 40);
    }
}
