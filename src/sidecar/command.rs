//! Which arguments of a command are keys, and how the sidecar must treat the command (pure).
//!
//! The sidecar routes every key to the instance that owns it, so for each command it needs to
//! know where the keys are, whether they may be split across instances, and whether the
//! command is to be answered locally, sent to every instance, or refused. This module holds a
//! static table of the Redis 7 commands with that knowledge, and extracts key positions from
//! an argument list exactly as Redis' own key specs do (`COMMAND GETKEYS` is the oracle: the
//! integration test `tests/command_table.rs` compares the two on thousands of invocations).
//! Two deliberate differences, both where GETKEYS disagrees with the command it describes:
//! XREAD/XREADGROUP options are walked as the command walks them (GETKEYS takes the first
//! argument spelled "streams", even a consumer's name), and `PFMERGE dest` keeps its key
//! (GETKEYS gives up on it). Where the command would fail before touching a key (arity, a bad
//! numkeys), [`key_indices`] fails with the command's own error text.
//!
//! Every command Redis 7.0 knows is in the table, if only to be refused with a reason, so
//! "unknown command" is only ever said of commands Redis would not know either.

use std::cmp::Ordering;

use thiserror::Error;

use crate::redis::resp::parse_i64;

/// What the sidecar knows about one command (or subcommand, like `object|encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Redis' full name in lower case: `get`, or `object|encoding` for a subcommand. Redis
    /// uses this spelling in its error messages, and so do we.
    pub name: &'static str,
    /// Number of arguments including the command name (and subcommand); negative means
    /// "at least", as in `COMMAND INFO`.
    pub arity: i32,
    /// How the sidecar handles the command.
    pub kind: Kind,
    /// Where the keys are, in the order Redis reports them; empty for commands without keys
    /// and for refused ones (never routed, so their keys are not modelled).
    pub keys: &'static [KeySpec],
    /// Redis' `write` flag. Scripts have it unset although they may write, as in Redis.
    pub write: bool,
    /// Subcommands, for container commands (`OBJECT`, `XINFO`, `CLIENT`, ...).
    pub subcommands: &'static [CommandSpec],
}

/// How the sidecar handles a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exactly one key: send the command to the instance that owns it.
    SingleKey,
    /// Any number of independent keys: split the command per instance, send the parts
    /// concurrently and merge the replies in the client's key order (see [`Split`]).
    MultiKey(Split),
    /// Several keys that must all live on one instance, because the command reads them
    /// together or writes atomically (RENAME, SINTERSTORE, MSETNX, ...). Refuse when they
    /// do not (Redis Cluster's CROSSSLOT, in our terms).
    SameInstance,
    /// Like [`Kind::SameInstance`], but the command may wait for data (BLPOP, XREAD with
    /// BLOCK, ...): it needs a backend connection of its own for as long as it waits. See
    /// [`blocks`].
    Blocking,
    /// EVAL and friends: the keys are declared by `numkeys` and must share one instance; with
    /// no keys, any instance can run the script.
    Script,
    /// MULTI / EXEC / DISCARD / WATCH / UNWATCH.
    Transaction(TxnCommand),
    /// Answered by the sidecar itself, without an instance.
    Local(LocalCommand),
    /// Sent to every instance, the replies combined.
    FanOut(FanOut),
    /// A container whose subcommand, the second argument, says what to do; [`resolve`] and
    /// [`key_indices`] look it up. Only an argument list that is too short resolves to the
    /// container itself (and then fails the arity check).
    Container,
    /// Refused; the reason is shown to the client (see [`CommandError::Refused`]).
    Refused(&'static str),
}

/// How a [`Kind::MultiKey`] command is split and its replies merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// MGET: each part returns values in its keys' order; reassemble in the client's order.
    Mget,
    /// MSET: key/value pairs; OK once every part is OK.
    Mset,
    /// DEL: the sum of the parts' counts.
    Del,
    /// UNLINK: the sum of the parts' counts.
    Unlink,
    /// EXISTS: the sum of the parts' counts (a key repeated by the client counts each time).
    Exists,
    /// TOUCH: the sum of the parts' counts.
    Touch,
}

/// How the replies of the parts of a split command are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// One array element per key, in the client's key order.
    ArrayInKeyOrder,
    /// `+OK` once every part answered `+OK`.
    AllOk,
    /// The sum of the parts' integer replies.
    SumIntegers,
}

impl Split {
    /// Arguments per key: 2 for MSET (key, value), else 1. MSETNX is not split: it must be
    /// atomic, so it is [`Kind::SameInstance`].
    pub fn args_per_key(self) -> usize {
        match self {
            Split::Mset => 2,
            _ => 1,
        }
    }

    /// How the parts' replies are combined.
    pub fn merge(self) -> Merge {
        match self {
            Split::Mget => Merge::ArrayInKeyOrder,
            Split::Mset => Merge::AllOk,
            Split::Del | Split::Unlink | Split::Exists | Split::Touch => Merge::SumIntegers,
        }
    }
}

/// Transaction commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnCommand {
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WATCH key...` (the keys are in [`CommandSpec::keys`]).
    Watch,
    /// `UNWATCH`.
    Unwatch,
}

/// Commands the sidecar answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCommand {
    /// `PING [message]`.
    Ping,
    /// `ECHO message`.
    Echo,
    /// `SELECT db`: the fleet has database 0 only.
    Select,
    /// `QUIT`.
    Quit,
    /// `RESET`.
    Reset,
    /// `AUTH [user] password`: the sidecar's own authentication, if any.
    Auth,
    /// `HELLO [protover ...]`: RESP2 only.
    Hello,
    /// `TIME`.
    Time,
    /// `INFO [section...]`: the sidecar's own view.
    Info,
    /// `<container> HELP`.
    Help,
    /// `COMMAND` alone: the table.
    Command,
    /// `COMMAND COUNT`.
    CommandCount,
    /// `COMMAND DOCS [name...]`.
    CommandDocs,
    /// `COMMAND GETKEYS command args...`: answerable with [`key_indices`].
    CommandGetKeys,
    /// `COMMAND GETKEYSANDFLAGS command args...`.
    CommandGetKeysAndFlags,
    /// `COMMAND INFO [name...]`.
    CommandInfo,
    /// `COMMAND LIST [FILTERBY ...]`.
    CommandList,
    /// `CLIENT ID`.
    ClientId,
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT SETNAME name`.
    ClientSetName,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value` (Redis 7.2; client libraries send it on connect).
    ClientSetInfo,
    /// `CLIENT INFO`.
    ClientInfo,
    /// `CLIENT LIST [...]`: the sidecar's own clients.
    ClientList,
    /// `CLIENT REPLY ON|OFF|SKIP`.
    ClientReply,
}

/// Keyless commands sent to every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOut {
    /// `DBSIZE`: the sum.
    DbSize,
    /// `SCAN cursor ...`: the sidecar walks the instances one after the other, keeping the
    /// instance in its cursor.
    Scan,
    /// `RANDOMKEY`: ask instances in random order until one has a key. Cheap, though not
    /// uniform over the fleet's keys; KEYS, by contrast, is refused.
    RandomKey,
    /// `SCRIPT LOAD`: every instance must know the script for EVALSHA to work anywhere.
    ScriptLoad,
    /// `SCRIPT EXISTS sha...`: 1 where every instance has the script.
    ScriptExists,
    /// `SCRIPT FLUSH [ASYNC|SYNC]`.
    ScriptFlush,
}

/// Where keys are found in an argument list (`args[0]` is the command name). A command's
/// key specs are applied in order and their keys concatenated, as Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// Keys at `first`, `first + step`, ... up to `last`; a negative `last` counts from the
    /// end (-1 is the last argument). With `step` 2 (MSET), the pairs must be complete.
    Range {
        /// Index of the first key.
        first: usize,
        /// Index of the last key, or from the end when negative.
        last: isize,
        /// Distance between keys.
        step: usize,
    },
    /// The argument at `numkeys_at` says how many keys follow from `first_key` (EVAL,
    /// ZUNIONSTORE, LMPOP...); `errors` picks the command family's error texts.
    NumKeys {
        /// Index of the count.
        numkeys_at: usize,
        /// Index of the first key.
        first_key: usize,
        /// Which error texts the command uses for a bad count.
        errors: NumKeysErrors,
    },
    /// The argument after the first `keyword` (case-insensitive) found from index
    /// `start_from` on; nothing if absent (GEORADIUS ... STORE key).
    Keyword {
        /// The keyword, upper case.
        keyword: &'static str,
        /// Where the search starts.
        start_from: usize,
    },
    /// XREAD / XREADGROUP: the options are walked as the command does (COUNT n, BLOCK ms,
    /// and for XREADGROUP GROUP g c and NOACK) up to `STREAMS`; the first half of the
    /// arguments after it are keys, the second half their IDs.
    Streams {
        /// Whether the XREADGROUP options are allowed.
        group: bool,
    },
    /// SORT's `STORE destination`, found the way Redis' `sortGetKeys` does: skipping the
    /// arguments of LIMIT (2), GET and BY (1), and keeping the last STORE.
    SortStore,
}

/// The error texts a command family uses for a bad `numkeys` (Redis is not consistent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumKeysErrors {
    /// EVAL, EVALSHA, EVAL_RO, EVALSHA_RO: 0 keys allowed.
    Eval,
    /// FCALL, FCALL_RO: 0 keys allowed.
    Fcall,
    /// LMPOP, BLMPOP, ZMPOP, BZMPOP.
    Mpop,
    /// SINTERCARD.
    SinterCard,
    /// ZUNION, ZINTER, ZDIFF, their STORE forms, ZINTERCARD.
    Zset,
}

/// Why a command cannot be run as sent. The Display is Redis' own text where Redis has one;
/// the proxy replies `-ERR <Display>`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// Not a command Redis 7 knows (nor the sidecar).
    #[error("unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand {
        /// The name as sent (at most 128 bytes).
        name: String,
        /// The first arguments, quoted, as Redis lists them.
        args: String,
    },
    /// A container command with an unknown subcommand.
    #[error("unknown subcommand '{subcommand}'. Try {command} HELP.")]
    UnknownSubcommand {
        /// The subcommand as sent.
        subcommand: String,
        /// The container, upper case.
        command: String,
    },
    /// The argument count does not match the arity (or MSET's pairs are incomplete).
    #[error("wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
    /// A count that is not an integer.
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// EVAL/FCALL with a negative numkeys.
    #[error("Number of keys can't be negative")]
    NegativeNumKeys,
    /// A numkeys larger than the arguments that follow it.
    #[error("Number of keys can't be greater than number of args")]
    TooManyKeys,
    /// FCALL with a numkeys that is not an integer.
    #[error("Bad number of keys provided")]
    BadNumKeys,
    /// LMPOP/ZMPOP/SINTERCARD with numkeys < 1 or not an integer.
    #[error("numkeys should be greater than 0")]
    NumKeysNotPositive,
    /// ZUNION & co with numkeys < 1.
    #[error("at least 1 input key is needed for '{0}' command")]
    NoInputKey(&'static str),
    /// Arguments that cannot be parsed (a numkeys past the end, XREAD without STREAMS).
    #[error("syntax error")]
    Syntax,
    /// XREAD/XREADGROUP with a key count that differs from the ID count.
    #[error(
        "Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified."
    )]
    UnbalancedStreams,
    /// XREAD/XREADGROUP with a BLOCK timeout that is not an integer.
    #[error("timeout is not an integer or out of range")]
    TimeoutNotInteger,
    /// XREAD/XREADGROUP with a negative BLOCK timeout.
    #[error("timeout is negative")]
    NegativeTimeout,
    /// XREAD with GROUP.
    #[error("The GROUP option is only supported by XREADGROUP. You called XREAD instead.")]
    GroupWithoutXreadgroup,
    /// XREAD with NOACK.
    #[error("The NOACK option is only supported by XREADGROUP. You called XREAD instead.")]
    NoackWithoutXreadgroup,
    /// XREADGROUP without GROUP.
    #[error("Missing GROUP option for XREADGROUP")]
    MissingGroup,
    /// A command the sidecar does not run.
    #[error("'{command}' is not available through the redis-fleet sidecar: {reason}")]
    Refused {
        /// The command's full name.
        command: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// A command ready to be routed: its spec (the subcommand's, for containers) and the indices
/// of its keys in the argument list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The command or subcommand.
    pub spec: &'static CommandSpec,
    /// Indices of the keys in the argument list, in Redis' order.
    pub keys: Vec<usize>,
}

impl CommandSpec {
    /// The subcommand of a container, case-insensitive.
    pub fn subcommand(&self, name: &[u8]) -> Option<&'static CommandSpec> {
        self.subcommands.iter().find(|sub| {
            sub.name
                .split_once('|')
                .is_some_and(|(_, sub)| sub.as_bytes().eq_ignore_ascii_case(name))
        })
    }

    /// Whether `argc` arguments (the name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = usize::try_from(self.arity.unsigned_abs()).unwrap_or(usize::MAX);
        if self.arity >= 0 {
            argc == arity
        } else {
            argc >= arity
        }
    }
}

/// The command named `name` (case-insensitive), without allocating: a binary search in the
/// sorted table.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let index = table::COMMANDS
        .binary_search_by(|spec| compare_lowercase(spec.name.as_bytes(), name))
        .ok()?;
    table::COMMANDS.get(index)
}

/// Every top-level command the sidecar knows, sorted by name.
pub fn commands() -> &'static [CommandSpec] {
    table::COMMANDS
}

fn compare_lowercase(table_name: &[u8], name: &[u8]) -> Ordering {
    table_name
        .iter()
        .copied()
        .cmp(name.iter().map(u8::to_ascii_lowercase))
}

/// Everything the proxy needs before routing a request: the command (or subcommand) and its
/// key indices, after the same checks as Redis (unknown command, unknown subcommand, arity,
/// numkeys) plus the sidecar's refusals.
pub fn resolve<A: AsRef<[u8]>>(args: &[A]) -> Result<Resolved, CommandError> {
    let Some(name) = args.first() else {
        return Err(unknown_command(args));
    };
    let spec = lookup(name.as_ref()).ok_or_else(|| unknown_command(args))?;
    let spec = pick_subcommand(spec, args)?;
    if let Kind::Refused(reason) = spec.kind {
        return Err(CommandError::Refused {
            command: spec.name,
            reason,
        });
    }
    let keys = key_indices(spec, args)?;
    Ok(Resolved { spec, keys })
}

/// The indices of the keys in `args` (`args[0]` is the command name), in the order Redis'
/// `COMMAND GETKEYS` gives them. For a container, the subcommand named by `args[1]` is used.
///
/// Errors are those the command itself would raise before touching a key: arity, a bad
/// numkeys, unbalanced XREAD streams, an incomplete MSET pair, an unknown subcommand.
/// Otherwise a command Redis would reject for other reasons still gets its key positions, so
/// the proxy can forward it and let Redis phrase the error.
pub fn key_indices<A: AsRef<[u8]>>(
    spec: &'static CommandSpec,
    args: &[A],
) -> Result<Vec<usize>, CommandError> {
    let spec = pick_subcommand(spec, args)?;
    if !spec.arity_ok(args.len()) {
        return Err(CommandError::WrongArity(spec.name));
    }
    let argc = args.len();
    let arg = |i: usize| args.get(i).map(AsRef::as_ref);
    let mut keys = Vec::new();
    for key_spec in spec.keys {
        match *key_spec {
            KeySpec::Range { first, last, step } => {
                let last = if last >= 0 {
                    last.unsigned_abs()
                } else {
                    match argc.checked_sub(last.unsigned_abs()) {
                        Some(last) => last,
                        None => continue,
                    }
                };
                // Redis drops the whole key list when a range is out of bounds (for us only
                // `PFMERGE dest` without sources, which is valid and has a key): skip it.
                if first > last || last >= argc {
                    continue;
                }
                let step = step.max(1);
                if !(last + 1 - first).is_multiple_of(step) {
                    return Err(CommandError::WrongArity(spec.name));
                }
                keys.extend((first..=last).step_by(step));
            }
            KeySpec::NumKeys {
                numkeys_at,
                first_key,
                errors,
            } => {
                let count = numkeys(
                    spec,
                    arg(numkeys_at),
                    argc.saturating_sub(first_key),
                    errors,
                )?;
                keys.extend(first_key..first_key + count);
            }
            KeySpec::Keyword {
                keyword,
                start_from,
            } => {
                if let Some(at) = find_keyword(args, keyword, start_from) {
                    keys.push(at + 1);
                }
            }
            KeySpec::Streams { group } => keys.extend(read_streams(args, group)?.keys),
            KeySpec::SortStore => {
                let mut store = None;
                let mut i = 2;
                while let Some(option) = arg(i) {
                    if option.eq_ignore_ascii_case(b"limit") {
                        i += 2;
                    } else if option.eq_ignore_ascii_case(b"get")
                        || option.eq_ignore_ascii_case(b"by")
                    {
                        i += 1;
                    } else if option.eq_ignore_ascii_case(b"store") && i + 1 < argc {
                        // No skip: Redis examines the destination as an option too.
                        store = Some(i + 1);
                    }
                    i += 1;
                }
                keys.extend(store);
            }
        }
    }
    Ok(keys)
}

/// Whether the command may hold its connection waiting: always for [`Kind::Blocking`]
/// commands, except XREAD/XREADGROUP, which only wait with a BLOCK option.
pub fn blocks<A: AsRef<[u8]>>(spec: &CommandSpec, args: &[A]) -> bool {
    if spec.kind != Kind::Blocking {
        return false;
    }
    match spec.keys {
        [KeySpec::Streams { group }] => read_streams(args, *group).is_ok_and(|read| read.block),
        _ => true,
    }
}

/// What XREAD / XREADGROUP options say about keys and blocking.
struct StreamsRead {
    keys: std::ops::Range<usize>,
    block: bool,
}

/// Walks XREAD / XREADGROUP options exactly like `xreadCommand`, errors included, rather than
/// searching for the first `STREAMS` as `COMMAND GETKEYS` does: a consumer named "streams"
/// must not be taken for the keyword, and the command's own error is the one to report.
fn read_streams<A: AsRef<[u8]>>(args: &[A], group: bool) -> Result<StreamsRead, CommandError> {
    let argc = args.len();
    let arg = |i: usize| args.get(i).map(AsRef::as_ref).unwrap_or_default();
    let (mut block, mut has_group) = (false, false);
    let mut i = 1;
    while i < argc {
        let more = argc - i - 1;
        let option = arg(i);
        if option.eq_ignore_ascii_case(b"block") && more > 0 {
            i += 1;
            let timeout = parse_i64(arg(i)).ok_or(CommandError::TimeoutNotInteger)?;
            if timeout < 0 {
                return Err(CommandError::NegativeTimeout);
            }
            block = true;
        } else if option.eq_ignore_ascii_case(b"count") && more > 0 {
            i += 1;
            parse_i64(arg(i)).ok_or(CommandError::NotAnInteger)?;
        } else if option.eq_ignore_ascii_case(b"streams") && more > 0 {
            let first = i + 1;
            let rest = argc - first;
            if !rest.is_multiple_of(2) {
                return Err(CommandError::UnbalancedStreams);
            }
            if group && !has_group {
                return Err(CommandError::MissingGroup);
            }
            return Ok(StreamsRead {
                keys: first..first + rest / 2,
                block,
            });
        } else if option.eq_ignore_ascii_case(b"group") && more >= 2 {
            if !group {
                return Err(CommandError::GroupWithoutXreadgroup);
            }
            has_group = true;
            i += 2;
        } else if option.eq_ignore_ascii_case(b"noack") {
            if !group {
                return Err(CommandError::NoackWithoutXreadgroup);
            }
        } else {
            return Err(CommandError::Syntax);
        }
        i += 1;
    }
    // No STREAMS option.
    Err(CommandError::Syntax)
}

/// The subcommand a container's argument list names; any other spec unchanged.
fn pick_subcommand<A: AsRef<[u8]>>(
    spec: &'static CommandSpec,
    args: &[A],
) -> Result<&'static CommandSpec, CommandError> {
    match args.get(1) {
        Some(sub) if !spec.subcommands.is_empty() => {
            spec.subcommand(sub.as_ref())
                .ok_or_else(|| CommandError::UnknownSubcommand {
                    subcommand: c_text(sub.as_ref(), 128),
                    command: c_text(
                        args.first().map(AsRef::as_ref).unwrap_or_default(),
                        usize::MAX,
                    )
                    .to_ascii_uppercase(),
                })
        }
        _ => Ok(spec),
    }
}

/// Where Redis' keyword search finds `keyword`: from `start_from` up to the next-to-last
/// argument (a keyword in last position has no key after it).
fn find_keyword<A: AsRef<[u8]>>(args: &[A], keyword: &str, start_from: usize) -> Option<usize> {
    let end = args.len().saturating_sub(1);
    (start_from..end).find(|&i| {
        args.get(i)
            .is_some_and(|a| a.as_ref().eq_ignore_ascii_case(keyword.as_bytes()))
    })
}

/// Parses a numkeys argument with the checks, and error texts, of the command family.
fn numkeys(
    spec: &CommandSpec,
    raw: Option<&[u8]>,
    available: usize,
    errors: NumKeysErrors,
) -> Result<usize, CommandError> {
    let value = raw.and_then(parse_i64);
    let (not_integer, below_min, min, too_many) = match errors {
        NumKeysErrors::Eval => (
            CommandError::NotAnInteger,
            CommandError::NegativeNumKeys,
            0,
            CommandError::TooManyKeys,
        ),
        NumKeysErrors::Fcall => (
            CommandError::BadNumKeys,
            CommandError::NegativeNumKeys,
            0,
            CommandError::TooManyKeys,
        ),
        NumKeysErrors::Mpop => (
            CommandError::NumKeysNotPositive,
            CommandError::NumKeysNotPositive,
            1,
            CommandError::Syntax,
        ),
        NumKeysErrors::SinterCard => (
            CommandError::NumKeysNotPositive,
            CommandError::NumKeysNotPositive,
            1,
            CommandError::TooManyKeys,
        ),
        NumKeysErrors::Zset => (
            CommandError::NotAnInteger,
            CommandError::NoInputKey(spec.name),
            1,
            CommandError::Syntax,
        ),
    };
    let value = value.ok_or(not_integer)?;
    if value < min {
        return Err(below_min);
    }
    let count = usize::try_from(value).map_err(|_| too_many.clone())?;
    if count > available {
        return Err(too_many);
    }
    Ok(count)
}

/// Bytes as Redis prints them with `%.Ns`: cut at a NUL or after `max` bytes; CR and LF
/// become spaces (Redis strips them from error lines); invalid UTF-8 is replaced.
fn c_text(bytes: &[u8], max: usize) -> String {
    let end = memchr::memchr(0, bytes).unwrap_or(bytes.len()).min(max);
    let text: Vec<u8> = bytes
        .get(..end)
        .unwrap_or_default()
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect();
    String::from_utf8_lossy(&text).into_owned()
}

/// Redis' "unknown command" error: the name, then the first arguments quoted, 128 bytes' worth.
fn unknown_command<A: AsRef<[u8]>>(args: &[A]) -> CommandError {
    let name = c_text(args.first().map(AsRef::as_ref).unwrap_or_default(), 128);
    let mut list = Vec::new();
    for arg in args.iter().skip(1) {
        if list.len() >= 128 {
            break;
        }
        let room = 128 - list.len();
        let arg = arg.as_ref();
        let end = memchr::memchr(0, arg).unwrap_or(arg.len()).min(room);
        list.push(b'\'');
        list.extend_from_slice(arg.get(..end).unwrap_or_default());
        list.extend_from_slice(b"' ");
    }
    CommandError::UnknownCommand {
        name,
        args: c_text(&list, usize::MAX),
    }
}

/// The command table, kept in its own module so its many short names stay local.
mod table {
    use super::FanOut as F;
    use super::KeySpec::SortStore;
    use super::Kind::*;
    use super::LocalCommand as L;
    use super::NumKeysErrors::*;
    use super::Split as S;
    use super::TxnCommand as T;
    use super::{CommandSpec, KeySpec, Kind, NumKeysErrors};

    const READ: bool = false;
    const WRITE: bool = true;

    const ADMIN: &str = "administrative commands act on a single Redis instance; run them on the instances directly";
    const FLUSH: &str =
        "it would erase every instance of the fleet; flush the instances directly if you mean it";
    const KEYS: &str =
        "KEYS would block every instance of the fleet; use SCAN, which the sidecar runs fleet-wide";
    const ONE_DB: &str = "the fleet has a single database, 0";
    const CLUSTER: &str = "the sidecar presents a standalone Redis, not a Redis Cluster";
    const REPLICATION: &str = "replication and failover are managed by the redis-fleet operator";
    const PUBSUB: &str = "pub/sub is not supported by the sidecar in this version";
    const TRACKING: &str = "client-side caching (tracking) is not supported by the sidecar";
    const FUNCTION: &str =
        "load functions on each instance directly; FCALL and FCALL_RO work once they are there";
    const UNSUPPORTED: &str = "not supported by the sidecar";

    const fn c(
        name: &'static str,
        arity: i32,
        kind: Kind,
        keys: &'static [KeySpec],
        write: bool,
    ) -> CommandSpec {
        CommandSpec {
            name,
            arity,
            kind,
            keys,
            write,
            subcommands: &[],
        }
    }

    const fn container(
        name: &'static str,
        arity: i32,
        kind: Kind,
        subcommands: &'static [CommandSpec],
    ) -> CommandSpec {
        CommandSpec {
            name,
            arity,
            kind,
            keys: &[],
            write: false,
            subcommands,
        }
    }

    const fn key(index: usize) -> KeySpec {
        KeySpec::Range {
            first: index,
            last: index as isize,
            step: 1,
        }
    }

    const fn range(first: usize, last: isize, step: usize) -> KeySpec {
        KeySpec::Range { first, last, step }
    }

    const fn numkeys(numkeys_at: usize, first_key: usize, errors: NumKeysErrors) -> KeySpec {
        KeySpec::NumKeys {
            numkeys_at,
            first_key,
            errors,
        }
    }

    const fn keyword(keyword: &'static str, start_from: usize) -> KeySpec {
        KeySpec::Keyword {
            keyword,
            start_from,
        }
    }

    const fn streams(group: bool) -> KeySpec {
        KeySpec::Streams { group }
    }

    // Sorted by name (lookup is a binary search; a test checks the order). Arity, keys and the
    // write flag are Redis 7.0's, checked against a real server by tests/command_table.rs.
    pub(super) static COMMANDS: &[CommandSpec] = &[
        c("acl", -2, Refused(ADMIN), &[], READ),
        c("append", 3, SingleKey, &[key(1)], WRITE),
        c("asking", 1, Refused(CLUSTER), &[], READ),
        c("auth", -2, Local(L::Auth), &[], READ),
        c("bgrewriteaof", 1, Refused(ADMIN), &[], READ),
        c("bgsave", -1, Refused(ADMIN), &[], READ),
        c("bitcount", -2, SingleKey, &[key(1)], READ),
        c("bitfield", -2, SingleKey, &[key(1)], WRITE),
        c("bitfield_ro", -2, SingleKey, &[key(1)], READ),
        c("bitop", -4, SameInstance, &[key(2), range(3, -1, 1)], WRITE),
        c("bitpos", -3, SingleKey, &[key(1)], READ),
        c("blmove", 6, Blocking, &[key(1), key(2)], WRITE),
        c("blmpop", -5, Blocking, &[numkeys(2, 3, Mpop)], WRITE),
        c("blpop", -3, Blocking, &[range(1, -2, 1)], WRITE),
        c("brpop", -3, Blocking, &[range(1, -2, 1)], WRITE),
        c("brpoplpush", 4, Blocking, &[key(1), key(2)], WRITE),
        c("bzmpop", -5, Blocking, &[numkeys(2, 3, Mpop)], WRITE),
        c("bzpopmax", -3, Blocking, &[range(1, -2, 1)], WRITE),
        c("bzpopmin", -3, Blocking, &[range(1, -2, 1)], WRITE),
        container("client", -2, Container, CLIENT_SUBCOMMANDS),
        c("cluster", -2, Refused(CLUSTER), &[], READ),
        container("command", -1, Local(L::Command), COMMAND_SUBCOMMANDS),
        c("config", -2, Refused(ADMIN), &[], READ),
        c("copy", -3, SameInstance, &[key(1), key(2)], WRITE),
        c("dbsize", 1, FanOut(F::DbSize), &[], READ),
        c("debug", -2, Refused(ADMIN), &[], READ),
        c("decr", 2, SingleKey, &[key(1)], WRITE),
        c("decrby", 3, SingleKey, &[key(1)], WRITE),
        c("del", -2, MultiKey(S::Del), &[range(1, -1, 1)], WRITE),
        c("discard", 1, Transaction(T::Discard), &[], READ),
        c("dump", 2, SingleKey, &[key(1)], READ),
        c("echo", 2, Local(L::Echo), &[], READ),
        c("eval", -3, Script, &[numkeys(2, 3, Eval)], READ),
        c("eval_ro", -3, Script, &[numkeys(2, 3, Eval)], READ),
        c("evalsha", -3, Script, &[numkeys(2, 3, Eval)], READ),
        c("evalsha_ro", -3, Script, &[numkeys(2, 3, Eval)], READ),
        c("exec", 1, Transaction(T::Exec), &[], READ),
        c("exists", -2, MultiKey(S::Exists), &[range(1, -1, 1)], READ),
        c("expire", -3, SingleKey, &[key(1)], WRITE),
        c("expireat", -3, SingleKey, &[key(1)], WRITE),
        c("expiretime", 2, SingleKey, &[key(1)], READ),
        c("failover", -1, Refused(REPLICATION), &[], READ),
        c("fcall", -3, Script, &[numkeys(2, 3, Fcall)], READ),
        c("fcall_ro", -3, Script, &[numkeys(2, 3, Fcall)], READ),
        c("flushall", -1, Refused(FLUSH), &[], WRITE),
        c("flushdb", -1, Refused(FLUSH), &[], WRITE),
        c("function", -2, Refused(FUNCTION), &[], READ),
        c("geoadd", -5, SingleKey, &[key(1)], WRITE),
        c("geodist", -4, SingleKey, &[key(1)], READ),
        c("geohash", -2, SingleKey, &[key(1)], READ),
        c("geopos", -2, SingleKey, &[key(1)], READ),
        c(
            "georadius",
            -6,
            SameInstance,
            &[key(1), keyword("STORE", 6), keyword("STOREDIST", 6)],
            WRITE,
        ),
        c("georadius_ro", -6, SingleKey, &[key(1)], READ),
        c(
            "georadiusbymember",
            -5,
            SameInstance,
            &[key(1), keyword("STORE", 5), keyword("STOREDIST", 5)],
            WRITE,
        ),
        c("georadiusbymember_ro", -5, SingleKey, &[key(1)], READ),
        c("geosearch", -7, SingleKey, &[key(1)], READ),
        c("geosearchstore", -8, SameInstance, &[key(1), key(2)], WRITE),
        c("get", 2, SingleKey, &[key(1)], READ),
        c("getbit", 3, SingleKey, &[key(1)], READ),
        c("getdel", 2, SingleKey, &[key(1)], WRITE),
        c("getex", -2, SingleKey, &[key(1)], WRITE),
        c("getrange", 4, SingleKey, &[key(1)], READ),
        c("getset", 3, SingleKey, &[key(1)], WRITE),
        c("hdel", -3, SingleKey, &[key(1)], WRITE),
        c("hello", -1, Local(L::Hello), &[], READ),
        c("hexists", 3, SingleKey, &[key(1)], READ),
        c("hget", 3, SingleKey, &[key(1)], READ),
        c("hgetall", 2, SingleKey, &[key(1)], READ),
        c("hincrby", 4, SingleKey, &[key(1)], WRITE),
        c("hincrbyfloat", 4, SingleKey, &[key(1)], WRITE),
        c("hkeys", 2, SingleKey, &[key(1)], READ),
        c("hlen", 2, SingleKey, &[key(1)], READ),
        c("hmget", -3, SingleKey, &[key(1)], READ),
        c("hmset", -4, SingleKey, &[key(1)], WRITE),
        c("hrandfield", -2, SingleKey, &[key(1)], READ),
        c("hscan", -3, SingleKey, &[key(1)], READ),
        c("hset", -4, SingleKey, &[key(1)], WRITE),
        c("hsetnx", 4, SingleKey, &[key(1)], WRITE),
        c("hstrlen", 3, SingleKey, &[key(1)], READ),
        c("hvals", 2, SingleKey, &[key(1)], READ),
        c("incr", 2, SingleKey, &[key(1)], WRITE),
        c("incrby", 3, SingleKey, &[key(1)], WRITE),
        c("incrbyfloat", 3, SingleKey, &[key(1)], WRITE),
        c("info", -1, Local(L::Info), &[], READ),
        c("keys", 2, Refused(KEYS), &[], READ),
        c("lastsave", 1, Refused(ADMIN), &[], READ),
        c("latency", -2, Refused(ADMIN), &[], READ),
        c("lcs", -3, SameInstance, &[range(1, 2, 1)], READ),
        c("lindex", 3, SingleKey, &[key(1)], READ),
        c("linsert", 5, SingleKey, &[key(1)], WRITE),
        c("llen", 2, SingleKey, &[key(1)], READ),
        c("lmove", 5, SameInstance, &[key(1), key(2)], WRITE),
        c("lmpop", -4, SameInstance, &[numkeys(1, 2, Mpop)], WRITE),
        c("lolwut", -1, Refused(UNSUPPORTED), &[], READ),
        c("lpop", -2, SingleKey, &[key(1)], WRITE),
        c("lpos", -3, SingleKey, &[key(1)], READ),
        c("lpush", -3, SingleKey, &[key(1)], WRITE),
        c("lpushx", -3, SingleKey, &[key(1)], WRITE),
        c("lrange", 4, SingleKey, &[key(1)], READ),
        c("lrem", 4, SingleKey, &[key(1)], WRITE),
        c("lset", 4, SingleKey, &[key(1)], WRITE),
        c("ltrim", 4, SingleKey, &[key(1)], WRITE),
        container("memory", -2, Container, MEMORY_SUBCOMMANDS),
        c("mget", -2, MultiKey(S::Mget), &[range(1, -1, 1)], READ),
        c("migrate", -6, Refused(ADMIN), &[], WRITE),
        c("module", -2, Refused(ADMIN), &[], READ),
        c("monitor", 1, Refused(ADMIN), &[], READ),
        c("move", 3, Refused(ONE_DB), &[], WRITE),
        c("mset", -3, MultiKey(S::Mset), &[range(1, -1, 2)], WRITE),
        c("msetnx", -3, SameInstance, &[range(1, -1, 2)], WRITE),
        c("multi", 1, Transaction(T::Multi), &[], READ),
        container("object", -2, Container, OBJECT_SUBCOMMANDS),
        c("persist", 2, SingleKey, &[key(1)], WRITE),
        c("pexpire", -3, SingleKey, &[key(1)], WRITE),
        c("pexpireat", -3, SingleKey, &[key(1)], WRITE),
        c("pexpiretime", 2, SingleKey, &[key(1)], READ),
        c("pfadd", -2, SingleKey, &[key(1)], WRITE),
        c("pfcount", -2, SameInstance, &[range(1, -1, 1)], READ),
        c("pfdebug", 3, Refused(ADMIN), &[], WRITE),
        c(
            "pfmerge",
            -2,
            SameInstance,
            &[key(1), range(2, -1, 1)],
            WRITE,
        ),
        c("pfselftest", 1, Refused(ADMIN), &[], READ),
        c("ping", -1, Local(L::Ping), &[], READ),
        c("psetex", 4, SingleKey, &[key(1)], WRITE),
        c("psubscribe", -2, Refused(PUBSUB), &[], READ),
        c("psync", -3, Refused(REPLICATION), &[], READ),
        c("pttl", 2, SingleKey, &[key(1)], READ),
        c("publish", 3, Refused(PUBSUB), &[], READ),
        c("pubsub", -2, Refused(PUBSUB), &[], READ),
        c("punsubscribe", -1, Refused(PUBSUB), &[], READ),
        c("quit", -1, Local(L::Quit), &[], READ),
        c("randomkey", 1, FanOut(F::RandomKey), &[], READ),
        c("readonly", 1, Refused(CLUSTER), &[], READ),
        c("readwrite", 1, Refused(CLUSTER), &[], READ),
        c("rename", 3, SameInstance, &[key(1), key(2)], WRITE),
        c("renamenx", 3, SameInstance, &[key(1), key(2)], WRITE),
        c("replconf", -1, Refused(REPLICATION), &[], READ),
        c("replicaof", 3, Refused(REPLICATION), &[], READ),
        c("reset", 1, Local(L::Reset), &[], READ),
        c("restore", -4, SingleKey, &[key(1)], WRITE),
        c("restore-asking", -4, Refused(CLUSTER), &[], WRITE),
        c("role", 1, Refused(REPLICATION), &[], READ),
        c("rpop", -2, SingleKey, &[key(1)], WRITE),
        c("rpoplpush", 3, SameInstance, &[key(1), key(2)], WRITE),
        c("rpush", -3, SingleKey, &[key(1)], WRITE),
        c("rpushx", -3, SingleKey, &[key(1)], WRITE),
        c("sadd", -3, SingleKey, &[key(1)], WRITE),
        c("save", 1, Refused(ADMIN), &[], READ),
        c("scan", -2, FanOut(F::Scan), &[], READ),
        c("scard", 2, SingleKey, &[key(1)], READ),
        container("script", -2, Container, SCRIPT_SUBCOMMANDS),
        c("sdiff", -2, SameInstance, &[range(1, -1, 1)], READ),
        c(
            "sdiffstore",
            -3,
            SameInstance,
            &[key(1), range(2, -1, 1)],
            WRITE,
        ),
        c("select", 2, Local(L::Select), &[], READ),
        c("set", -3, SingleKey, &[key(1)], WRITE),
        c("setbit", 4, SingleKey, &[key(1)], WRITE),
        c("setex", 4, SingleKey, &[key(1)], WRITE),
        c("setnx", 3, SingleKey, &[key(1)], WRITE),
        c("setrange", 4, SingleKey, &[key(1)], WRITE),
        c("shutdown", -1, Refused(ADMIN), &[], READ),
        c("sinter", -2, SameInstance, &[range(1, -1, 1)], READ),
        c(
            "sintercard",
            -3,
            SameInstance,
            &[numkeys(1, 2, SinterCard)],
            READ,
        ),
        c(
            "sinterstore",
            -3,
            SameInstance,
            &[key(1), range(2, -1, 1)],
            WRITE,
        ),
        c("sismember", 3, SingleKey, &[key(1)], READ),
        c("slaveof", 3, Refused(REPLICATION), &[], READ),
        c("slowlog", -2, Refused(ADMIN), &[], READ),
        c("smembers", 2, SingleKey, &[key(1)], READ),
        c("smismember", -3, SingleKey, &[key(1)], READ),
        c("smove", 4, SameInstance, &[key(1), key(2)], WRITE),
        c("sort", -2, SameInstance, &[key(1), SortStore], WRITE),
        c("sort_ro", -2, SingleKey, &[key(1)], READ),
        c("spop", -2, SingleKey, &[key(1)], WRITE),
        c("spublish", 3, Refused(PUBSUB), &[], READ),
        c("srandmember", -2, SingleKey, &[key(1)], READ),
        c("srem", -3, SingleKey, &[key(1)], WRITE),
        c("sscan", -3, SingleKey, &[key(1)], READ),
        c("ssubscribe", -2, Refused(PUBSUB), &[], READ),
        c("strlen", 2, SingleKey, &[key(1)], READ),
        c("subscribe", -2, Refused(PUBSUB), &[], READ),
        c("substr", 4, SingleKey, &[key(1)], READ),
        c("sunion", -2, SameInstance, &[range(1, -1, 1)], READ),
        c(
            "sunionstore",
            -3,
            SameInstance,
            &[key(1), range(2, -1, 1)],
            WRITE,
        ),
        c("sunsubscribe", -1, Refused(PUBSUB), &[], READ),
        c("swapdb", 3, Refused(ONE_DB), &[], WRITE),
        c("sync", 1, Refused(REPLICATION), &[], READ),
        c("time", 1, Local(L::Time), &[], READ),
        c("touch", -2, MultiKey(S::Touch), &[range(1, -1, 1)], READ),
        c("ttl", 2, SingleKey, &[key(1)], READ),
        c("type", 2, SingleKey, &[key(1)], READ),
        c("unlink", -2, MultiKey(S::Unlink), &[range(1, -1, 1)], WRITE),
        c("unsubscribe", -1, Refused(PUBSUB), &[], READ),
        c("unwatch", 1, Transaction(T::Unwatch), &[], READ),
        c("wait", 3, Refused(REPLICATION), &[], READ),
        c("watch", -2, Transaction(T::Watch), &[range(1, -1, 1)], READ),
        c("xack", -4, SingleKey, &[key(1)], WRITE),
        c("xadd", -5, SingleKey, &[key(1)], WRITE),
        c("xautoclaim", -6, SingleKey, &[key(1)], WRITE),
        c("xclaim", -6, SingleKey, &[key(1)], WRITE),
        c("xdel", -3, SingleKey, &[key(1)], WRITE),
        container("xgroup", -2, Container, XGROUP_SUBCOMMANDS),
        container("xinfo", -2, Container, XINFO_SUBCOMMANDS),
        c("xlen", 2, SingleKey, &[key(1)], READ),
        c("xpending", -3, SingleKey, &[key(1)], READ),
        c("xrange", -4, SingleKey, &[key(1)], READ),
        c("xread", -4, Blocking, &[streams(false)], READ),
        c("xreadgroup", -7, Blocking, &[streams(true)], WRITE),
        c("xrevrange", -4, SingleKey, &[key(1)], READ),
        c("xsetid", -3, SingleKey, &[key(1)], WRITE),
        c("xtrim", -4, SingleKey, &[key(1)], WRITE),
        c("zadd", -4, SingleKey, &[key(1)], WRITE),
        c("zcard", 2, SingleKey, &[key(1)], READ),
        c("zcount", 4, SingleKey, &[key(1)], READ),
        c("zdiff", -3, SameInstance, &[numkeys(1, 2, Zset)], READ),
        c(
            "zdiffstore",
            -4,
            SameInstance,
            &[key(1), numkeys(2, 3, Zset)],
            WRITE,
        ),
        c("zincrby", 4, SingleKey, &[key(1)], WRITE),
        c("zinter", -3, SameInstance, &[numkeys(1, 2, Zset)], READ),
        c("zintercard", -3, SameInstance, &[numkeys(1, 2, Zset)], READ),
        c(
            "zinterstore",
            -4,
            SameInstance,
            &[key(1), numkeys(2, 3, Zset)],
            WRITE,
        ),
        c("zlexcount", 4, SingleKey, &[key(1)], READ),
        c("zmpop", -4, SameInstance, &[numkeys(1, 2, Mpop)], WRITE),
        c("zmscore", -3, SingleKey, &[key(1)], READ),
        c("zpopmax", -2, SingleKey, &[key(1)], WRITE),
        c("zpopmin", -2, SingleKey, &[key(1)], WRITE),
        c("zrandmember", -2, SingleKey, &[key(1)], READ),
        c("zrange", -4, SingleKey, &[key(1)], READ),
        c("zrangebylex", -4, SingleKey, &[key(1)], READ),
        c("zrangebyscore", -4, SingleKey, &[key(1)], READ),
        c("zrangestore", -5, SameInstance, &[key(1), key(2)], WRITE),
        c("zrank", 3, SingleKey, &[key(1)], READ),
        c("zrem", -3, SingleKey, &[key(1)], WRITE),
        c("zremrangebylex", 4, SingleKey, &[key(1)], WRITE),
        c("zremrangebyrank", 4, SingleKey, &[key(1)], WRITE),
        c("zremrangebyscore", 4, SingleKey, &[key(1)], WRITE),
        c("zrevrange", -4, SingleKey, &[key(1)], READ),
        c("zrevrangebylex", -4, SingleKey, &[key(1)], READ),
        c("zrevrangebyscore", -4, SingleKey, &[key(1)], READ),
        c("zrevrank", 3, SingleKey, &[key(1)], READ),
        c("zscan", -3, SingleKey, &[key(1)], READ),
        c("zscore", 3, SingleKey, &[key(1)], READ),
        c("zunion", -3, SameInstance, &[numkeys(1, 2, Zset)], READ),
        c(
            "zunionstore",
            -4,
            SameInstance,
            &[key(1), numkeys(2, 3, Zset)],
            WRITE,
        ),
    ];

    static CLIENT_SUBCOMMANDS: &[CommandSpec] = &[
        c("client|caching", 3, Refused(TRACKING), &[], READ),
        c("client|getname", 2, Local(L::ClientGetName), &[], READ),
        c("client|getredir", 2, Refused(TRACKING), &[], READ),
        c("client|help", 2, Local(L::Help), &[], READ),
        c("client|id", 2, Local(L::ClientId), &[], READ),
        c("client|info", 2, Local(L::ClientInfo), &[], READ),
        c("client|kill", -3, Refused(ADMIN), &[], READ),
        c("client|list", -2, Local(L::ClientList), &[], READ),
        c("client|no-evict", 3, Refused(ADMIN), &[], READ),
        c("client|pause", -3, Refused(ADMIN), &[], READ),
        c("client|reply", 3, Local(L::ClientReply), &[], READ),
        c("client|setinfo", 4, Local(L::ClientSetInfo), &[], READ),
        c("client|setname", 3, Local(L::ClientSetName), &[], READ),
        c("client|tracking", -3, Refused(TRACKING), &[], READ),
        c("client|trackinginfo", 2, Refused(TRACKING), &[], READ),
        c("client|unblock", -3, Refused(ADMIN), &[], READ),
        c("client|unpause", 2, Refused(ADMIN), &[], READ),
    ];

    static COMMAND_SUBCOMMANDS: &[CommandSpec] = &[
        c("command|count", 2, Local(L::CommandCount), &[], READ),
        c("command|docs", -2, Local(L::CommandDocs), &[], READ),
        c("command|getkeys", -4, Local(L::CommandGetKeys), &[], READ),
        c(
            "command|getkeysandflags",
            -4,
            Local(L::CommandGetKeysAndFlags),
            &[],
            READ,
        ),
        c("command|help", 2, Local(L::Help), &[], READ),
        c("command|info", -2, Local(L::CommandInfo), &[], READ),
        c("command|list", -2, Local(L::CommandList), &[], READ),
    ];

    static MEMORY_SUBCOMMANDS: &[CommandSpec] = &[
        c("memory|doctor", 2, Refused(ADMIN), &[], READ),
        c("memory|help", 2, Local(L::Help), &[], READ),
        c("memory|malloc-stats", 2, Refused(ADMIN), &[], READ),
        c("memory|purge", 2, Refused(ADMIN), &[], READ),
        c("memory|stats", 2, Refused(ADMIN), &[], READ),
        c("memory|usage", -3, SingleKey, &[key(2)], READ),
    ];

    static OBJECT_SUBCOMMANDS: &[CommandSpec] = &[
        c("object|encoding", 3, SingleKey, &[key(2)], READ),
        c("object|freq", 3, SingleKey, &[key(2)], READ),
        c("object|help", 2, Local(L::Help), &[], READ),
        c("object|idletime", 3, SingleKey, &[key(2)], READ),
        c("object|refcount", 3, SingleKey, &[key(2)], READ),
    ];

    static SCRIPT_SUBCOMMANDS: &[CommandSpec] = &[
        c("script|debug", 3, Refused(ADMIN), &[], READ),
        c("script|exists", -3, FanOut(F::ScriptExists), &[], READ),
        c("script|flush", -2, FanOut(F::ScriptFlush), &[], READ),
        c("script|help", 2, Local(L::Help), &[], READ),
        c("script|kill", 2, Refused(ADMIN), &[], READ),
        c("script|load", 3, FanOut(F::ScriptLoad), &[], READ),
    ];

    static XGROUP_SUBCOMMANDS: &[CommandSpec] = &[
        c("xgroup|create", -5, SingleKey, &[key(2)], WRITE),
        c("xgroup|createconsumer", 5, SingleKey, &[key(2)], WRITE),
        c("xgroup|delconsumer", 5, SingleKey, &[key(2)], WRITE),
        c("xgroup|destroy", 4, SingleKey, &[key(2)], WRITE),
        c("xgroup|help", 2, Local(L::Help), &[], READ),
        c("xgroup|setid", -5, SingleKey, &[key(2)], WRITE),
    ];

    static XINFO_SUBCOMMANDS: &[CommandSpec] = &[
        c("xinfo|consumers", 4, SingleKey, &[key(2)], READ),
        c("xinfo|groups", 3, SingleKey, &[key(2)], READ),
        c("xinfo|help", 2, Local(L::Help), &[], READ),
        c("xinfo|stream", -3, SingleKey, &[key(2)], READ),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Vec<&[u8]> {
        line.split(' ').map(str::as_bytes).collect()
    }

    /// Key names of a space-separated invocation.
    fn keys(line: &str) -> Result<Vec<String>, CommandError> {
        let args = split(line);
        let spec = lookup(args[0]).unwrap_or_else(|| panic!("{line}: unknown"));
        let indices = key_indices(spec, &args)?;
        Ok(indices
            .into_iter()
            .map(|i| String::from_utf8(args[i].to_vec()).unwrap())
            .collect())
    }

    fn ok(line: &str, expected: &[&str]) {
        assert_eq!(
            keys(line),
            Ok(expected.iter().map(|k| k.to_string()).collect()),
            "{line}"
        );
    }

    fn err(line: &str, expected: &str) {
        match keys(line) {
            Err(error) => assert_eq!(error.to_string(), expected, "{line}"),
            Ok(keys) => panic!("{line}: expected an error, got keys {keys:?}"),
        }
    }

    #[test]
    fn table_is_sorted_unique_and_lower_case() {
        let names: Vec<&str> = commands().iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        for spec in commands() {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            for sub in spec.subcommands {
                let (parent, _) = sub.name.split_once('|').unwrap();
                assert_eq!(parent, spec.name);
                assert!(sub.subcommands.is_empty());
            }
            // Containers resolve through their subcommands; only COMMAND is valid alone.
            if !spec.subcommands.is_empty() {
                assert!(spec.kind == Kind::Container || spec.name == "command");
            }
        }
    }

    #[test]
    fn every_key_spec_is_consistent_with_its_kind() {
        let all = commands()
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands));
        for spec in all {
            match spec.kind {
                Kind::SingleKey => assert!(!spec.keys.is_empty(), "{}", spec.name),
                Kind::Local(_) | Kind::FanOut(_) | Kind::Refused(_) | Kind::Container => {
                    assert!(spec.keys.is_empty(), "{}", spec.name);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_exact() {
        for name in ["get", "GET", "gEt"] {
            assert_eq!(lookup(name.as_bytes()).unwrap().name, "get");
        }
        assert_eq!(lookup(b"GEORADIUS_RO").unwrap().name, "georadius_ro");
        assert_eq!(lookup(b"restore-asking").unwrap().name, "restore-asking");
        for name in [
            &b""[..],
            b"ge",
            b"gett",
            b"get ",
            b"\xffget",
            b"object|encoding",
        ] {
            assert!(lookup(name).is_none(), "{name:?}");
        }
        let object = lookup(b"object").unwrap();
        assert_eq!(
            object.subcommand(b"EnCoDiNg").unwrap().name,
            "object|encoding"
        );
        assert!(object.subcommand(b"nope").is_none());
    }

    #[test]
    fn single_keys() {
        ok("GET k", &["k"]);
        ok("set k v EX 10 GET", &["k"]);
        ok("HSET h f v f2 v2", &["h"]);
        ok("OBJECT ENCODING k", &["k"]);
        ok("object freq k", &["k"]);
        ok("MEMORY USAGE k SAMPLES 5", &["k"]);
        ok("XINFO STREAM s FULL", &["s"]);
        ok("XINFO CONSUMERS s g", &["s"]);
        ok("XGROUP CREATE s g $ MKSTREAM", &["s"]);
        ok("SORT_RO k BY w_* GET # STORE d", &["k"]);
        ok("GEOSEARCH k FROMMEMBER m BYRADIUS 1 km", &["k"]);
    }

    #[test]
    fn multi_keys() {
        ok("MGET a b c", &["a", "b", "c"]);
        ok("DEL a", &["a"]);
        ok("MSET a 1 b 2", &["a", "b"]);
        ok("MSETNX a 1 b 2", &["a", "b"]);
        err("MSET a 1 b", "wrong number of arguments for 'mset' command");
        err(
            "MSETNX a 1 b",
            "wrong number of arguments for 'msetnx' command",
        );
        ok("RENAME a b", &["a", "b"]);
        ok("LCS a b IDX", &["a", "b"]);
        ok("BITOP AND dest a b", &["dest", "a", "b"]);
        ok("BLPOP a b 0", &["a", "b"]);
        ok("BLMOVE a b LEFT RIGHT 0", &["a", "b"]);
        ok("SINTERSTORE d a b", &["d", "a", "b"]);
        ok("PFMERGE d a b", &["d", "a", "b"]);
        // Redis' GETKEYS gives up on this valid command; the destination is still a key.
        ok("PFMERGE d", &["d"]);
        ok("WATCH a b", &["a", "b"]);
        ok("GEOSEARCHSTORE d k FROMMEMBER m BYBOX 1 1 km", &["d", "k"]);
    }

    #[test]
    fn numkeys_commands() {
        ok("EVAL s 0", &[]);
        ok("EVAL s 0 a b", &[]);
        ok("EVAL s 2 a b c", &["a", "b"]);
        ok("FCALL_RO f 1 a", &["a"]);
        err(
            "EVAL s 3 a b",
            "Number of keys can't be greater than number of args",
        );
        err("EVAL s -1", "Number of keys can't be negative");
        err("EVAL s x", "value is not an integer or out of range");
        err("EVAL s 01 a", "value is not an integer or out of range");
        err(
            "EVALSHA s 99999999999999999999",
            "value is not an integer or out of range",
        );
        err("FCALL f x", "Bad number of keys provided");
        err(
            "FCALL f 2 a",
            "Number of keys can't be greater than number of args",
        );
        ok("ZUNIONSTORE dst 2 a b WEIGHTS 1 2", &["dst", "a", "b"]);
        ok("ZDIFFSTORE dst 1 a", &["dst", "a"]);
        ok("ZINTER 2 a b WITHSCORES", &["a", "b"]);
        err(
            "ZUNIONSTORE dst 0 a",
            "at least 1 input key is needed for 'zunionstore' command",
        );
        err(
            "ZUNION -1 a",
            "at least 1 input key is needed for 'zunion' command",
        );
        err("ZUNIONSTORE dst 5 a", "syntax error");
        err("ZINTERCARD x a", "value is not an integer or out of range");
        ok("LMPOP 2 a b LEFT COUNT 3", &["a", "b"]);
        ok("BLMPOP 0 2 a b LEFT", &["a", "b"]);
        ok("ZMPOP 1 z MIN", &["z"]);
        ok("BZMPOP 1.5 1 z MAX", &["z"]);
        err("LMPOP 0 a LEFT", "numkeys should be greater than 0");
        err("LMPOP x a LEFT", "numkeys should be greater than 0");
        err("LMPOP 5 a LEFT", "syntax error");
        ok("SINTERCARD 2 a b LIMIT 1", &["a", "b"]);
        err("SINTERCARD 0 a", "numkeys should be greater than 0");
        err(
            "SINTERCARD 3 a b",
            "Number of keys can't be greater than number of args",
        );
    }

    #[test]
    fn streams() {
        ok("XREAD STREAMS a b 0 0", &["a", "b"]);
        ok("XREAD COUNT 10 BLOCK 0 streams a 0", &["a"]);
        ok("XREADGROUP GROUP g c COUNT 1 STREAMS a b > >", &["a", "b"]);
        err(
            "XREAD STREAMS a b 0",
            "Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
        );
        err("XREAD COUNT 1 a b", "syntax error");
        // STREAMS in last position has nothing after it: not found.
        err("XREAD COUNT 1 STREAMS", "syntax error");
        // Options are walked like the command does, so its own errors come first...
        err("XREAD k1 STREAMS a 0", "syntax error");
        err(
            "XREAD COUNT x STREAMS a 0",
            "value is not an integer or out of range",
        );
        err("XREAD BLOCK -1 STREAMS a 0", "timeout is negative");
        err(
            "XREAD BLOCK 1.5 STREAMS a 0",
            "timeout is not an integer or out of range",
        );
        err(
            "XREAD GROUP g c STREAMS a 0",
            "The GROUP option is only supported by XREADGROUP. You called XREAD instead.",
        );
        err(
            "XREAD NOACK STREAMS a 0",
            "The NOACK option is only supported by XREADGROUP. You called XREAD instead.",
        );
        err(
            "XREADGROUP COUNT 1 NOACK STREAMS a 0",
            "Missing GROUP option for XREADGROUP",
        );
        // ...and a consumer named "streams" is a consumer (GETKEYS would take it for the
        // keyword).
        ok("XREADGROUP COUNT 1 GROUP g streams STREAMS a 0", &["a"]);
        ok(
            "XREADGROUP GROUP g c NOACK BLOCK 10 STREAMS a b > 0",
            &["a", "b"],
        );
    }

    #[test]
    fn sort_and_georadius_store() {
        ok("SORT k", &["k"]);
        ok("SORT k STORE d", &["k", "d"]);
        ok("sort k store d store e", &["k", "e"]);
        ok("SORT k LIMIT 0 1 STORE d", &["k", "d"]);
        // GET/BY take one argument, LIMIT two: "store" there is a pattern, not the option.
        ok("SORT k GET store d", &["k"]);
        ok("SORT k LIMIT store 1 x", &["k"]);
        ok("SORT k STORE", &["k"]);
        ok("GEORADIUS k 1 2 3 m STORE d", &["k", "d"]);
        ok("GEORADIUS k 1 2 3 m STOREDIST d", &["k", "d"]);
        ok("GEORADIUS k 1 2 3 m STOREDIST b STORE a", &["k", "a", "b"]);
        ok("GEORADIUSBYMEMBER k m 3 km STORE d", &["k", "d"]);
        ok("GEORADIUS k 1 2 3 m STORE", &["k"]);
    }

    #[test]
    fn arity_is_checked_like_redis() {
        err("GET", "wrong number of arguments for 'get' command");
        err("GET a b", "wrong number of arguments for 'get' command");
        err("SET k", "wrong number of arguments for 'set' command");
        err(
            "OBJECT ENCODING",
            "wrong number of arguments for 'object|encoding' command",
        );
        err(
            "XINFO STREAM",
            "wrong number of arguments for 'xinfo|stream' command",
        );
        ok("MGET a", &["a"]);
        let object = lookup(b"OBJECT").unwrap();
        assert_eq!(
            key_indices(object, &[&b"OBJECT"[..]]),
            Err(CommandError::WrongArity("object"))
        );
    }

    #[test]
    fn resolve_checks_everything_in_redis_order() {
        let resolved = resolve(&split("get k")).unwrap();
        assert_eq!((resolved.spec.name, resolved.keys), ("get", vec![1]));
        let resolved = resolve(&split("OBJECT encoding k")).unwrap();
        assert_eq!(
            (resolved.spec.name, resolved.keys),
            ("object|encoding", vec![2])
        );
        assert_eq!(
            resolve(&split("COMMAND")).unwrap().spec.kind,
            Kind::Local(LocalCommand::Command)
        );
        assert_eq!(
            resolve(&split("command getkeys get k")).unwrap().spec.kind,
            Kind::Local(LocalCommand::CommandGetKeys)
        );
        assert_eq!(
            resolve(&split("client setinfo lib-name x"))
                .unwrap()
                .spec
                .kind,
            Kind::Local(LocalCommand::ClientSetInfo)
        );
        assert_eq!(
            resolve(&split("foo a b")).unwrap_err().to_string(),
            "unknown command 'foo', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            resolve(&split("foo")).unwrap_err().to_string(),
            "unknown command 'foo', with args beginning with: "
        );
        assert_eq!(
            resolve(&split("object nope k")).unwrap_err().to_string(),
            "unknown subcommand 'nope'. Try OBJECT HELP."
        );
        assert_eq!(
            resolve(&split("FLUSHALL")).unwrap_err(),
            CommandError::Refused {
                command: "flushall",
                reason: table_reason("flushall"),
            }
        );
        assert!(
            resolve(&split("KEYS *"))
                .unwrap_err()
                .to_string()
                .contains("use SCAN")
        );
        assert!(matches!(
            resolve(&split("SUBSCRIBE ch")),
            Err(CommandError::Refused {
                command: "subscribe",
                ..
            })
        ));
        assert!(matches!(
            resolve(&split("CLIENT KILL ID 1")),
            Err(CommandError::Refused {
                command: "client|kill",
                ..
            })
        ));
        let empty: [&[u8]; 0] = [];
        assert!(matches!(
            resolve(&empty),
            Err(CommandError::UnknownCommand { .. })
        ));
    }

    fn table_reason(name: &str) -> &'static str {
        match lookup(name.as_bytes()).unwrap().kind {
            Kind::Refused(reason) => reason,
            other => panic!("{name} is {other:?}"),
        }
    }

    #[test]
    fn unknown_command_text_is_cut_like_redis() {
        let long = "x".repeat(200);
        let args = [long.as_bytes(), b"a\r\nb", &[b'y'; 200][..], b"z"];
        let text = resolve(&args).unwrap_err().to_string();
        let expected = format!(
            "unknown command '{}', with args beginning with: 'a  b' '{}' ",
            "x".repeat(128),
            "y".repeat(128 - 7)
        );
        assert_eq!(text, expected);
        // A NUL ends a C string.
        let args: [&[u8]; 2] = [b"fo\0o", b"a\0b"];
        assert_eq!(
            resolve(&args).unwrap_err().to_string(),
            "unknown command 'fo', with args beginning with: 'a' "
        );
    }

    #[test]
    fn kinds_of_the_brief() {
        let kind = |name: &str| lookup(name.as_bytes()).unwrap().kind;
        assert_eq!(kind("mget"), Kind::MultiKey(Split::Mget));
        assert_eq!(kind("msetnx"), Kind::SameInstance);
        assert_eq!(kind("blpop"), Kind::Blocking);
        assert_eq!(kind("evalsha"), Kind::Script);
        assert_eq!(kind("exec"), Kind::Transaction(TxnCommand::Exec));
        assert_eq!(kind("ping"), Kind::Local(LocalCommand::Ping));
        assert_eq!(kind("scan"), Kind::FanOut(FanOut::Scan));
        assert_eq!(kind("object"), Kind::Container);
        assert!(matches!(kind("publish"), Kind::Refused(_)));
        assert!(matches!(kind("config"), Kind::Refused(_)));
        assert_eq!(Split::Mset.args_per_key(), 2);
        assert_eq!(Split::Mget.args_per_key(), 1);
        assert_eq!(Split::Mget.merge(), Merge::ArrayInKeyOrder);
        assert_eq!(Split::Mset.merge(), Merge::AllOk);
        assert_eq!(Split::Exists.merge(), Merge::SumIntegers);
    }

    #[test]
    fn blocking_is_known_per_invocation() {
        let blocks_for = |line: &str| {
            let args = split(line);
            blocks(lookup(args[0]).unwrap(), &args)
        };
        assert!(blocks_for("BLPOP a 0"));
        assert!(blocks_for("XREAD BLOCK 0 STREAMS a $"));
        assert!(!blocks_for("XREAD COUNT 1 STREAMS a 0"));
        // "block" as a stream name is not the option.
        assert!(!blocks_for("XREAD STREAMS block 0"));
        assert!(blocks_for("XREADGROUP GROUP g block BLOCK 0 STREAMS a >"));
        assert!(!blocks_for("XREADGROUP GROUP g block STREAMS a >"));
        // A malformed invocation fails before it could block.
        assert!(!blocks_for("XREAD BLOCK x STREAMS a $"));
        assert!(!blocks_for("GET k"));
    }

    #[test]
    fn short_argument_lists_never_panic() {
        // Every spec, every length up to 8 arguments of assorted shapes.
        let words: [&[u8]; 6] = [b"STREAMS", b"2", b"-1", b"STORE", b"x", b"LIMIT"];
        let all = commands()
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands));
        for spec in all {
            for len in 0..8 {
                for shift in 0..words.len() {
                    let args: Vec<&[u8]> =
                        (0..len).map(|i| words[(i + shift) % words.len()]).collect();
                    if let Ok(keys) = key_indices(spec, &args) {
                        assert!(
                            keys.iter().all(|&k| k > 0 && k < args.len()),
                            "{}",
                            spec.name
                        );
                    }
                    let _ = blocks(spec, &args);
                }
            }
        }
    }
}
