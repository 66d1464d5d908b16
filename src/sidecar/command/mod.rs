//! Which arguments of a command are keys, and how the sidecar must treat the command (pure).
//! The types are here; key extraction is in `keys.rs`, the table of commands (Redis 7.0 to 8.2,
//! Valkey 8 and 9), as data, in `table.rs`.
//!
//! The sidecar routes every key to the instance that owns it, so for each command it needs to
//! know where the keys are, whether they may be split across instances, and whether the
//! command is to be answered locally, sent to every instance, or refused. This module holds a
//! static table of the commands of Redis 7.0 to 8.2 and Valkey 8 and 9 with that knowledge,
//! and extracts key positions from an argument list exactly as the servers' own key specs do
//! (`COMMAND GETKEYS` is the oracle: the integration test `tests/command_table.rs` compares
//! the two on thousands of invocations, against each of those servers).
//! Two deliberate differences, both where GETKEYS disagrees with the command it describes:
//! XREAD/XREADGROUP options are walked as the command walks them (GETKEYS takes the first
//! argument spelled "streams", even a consumer's name), and `PFMERGE dest` keeps its key
//! (GETKEYS gives up on it). Where the command would fail before touching a key (arity, a bad
//! numkeys), [`key_indices`] fails with the command's own error text.
//!
//! Every command those servers know is in the table, if only to be refused with a reason, so
//! "unknown command" is only ever said of commands none of them knows. The table is the union:
//! a command only Valkey has (DELIFEQ) is routed to a Redis instance like any other, and that
//! instance answers that it does not know it.

mod keys;
mod table;
#[cfg(test)]
mod tests;

use thiserror::Error;

pub use keys::{blocks, key_indices};
use keys::{pick_subcommand, unknown_command};

/// What the sidecar knows about one command (or subcommand, like `object|encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Redis' full name in lower case: `get`, or `object|encoding` for a subcommand. Redis
    /// uses this spelling in its error messages, and so do we.
    pub name: &'static str,
    /// Number of arguments including the command name (and subcommand); negative means
    /// "at least", as in `COMMAND INFO`. Module commands declare -1 there and check their
    /// arguments themselves; for them this is the least the module accepts, which is never
    /// less than the command and its key.
    pub arity: i32,
    /// How the sidecar handles the command.
    pub kind: Kind,
    /// Where the keys are, in the order Redis reports them; empty for commands without keys
    /// and for refused ones (never routed, so their keys are not modelled).
    pub keys: &'static [KeySpec],
    /// Redis' `write` flag. Scripts have it unset although they may write, as in Redis.
    pub write: bool,
    /// A read whose nil reply is a miss: its replies count as hits or misses of the key's
    /// category.
    pub counts_hits: bool,
    /// A read whose hits may extend the key's TTL up to `ttl.max` in an adaptive category.
    pub adaptive_read: bool,
    /// The keys a write creates or overwrites without giving them an expiry: they get their
    /// category's `ttl.default`.
    pub creates: Creates,
    /// Subcommands, for container commands (`OBJECT`, `XINFO`, `CLIENT`, ...).
    pub subcommands: &'static [CommandSpec],
    /// How the reply differs in RESP3 from the RESP2 reply the instances send.
    pub resp3: Resp3,
    /// For a command a module registers (Redis 8's built-in vector sets): the name as the
    /// module registered it, which the server uses in the command's error messages (`'VADD'`).
    pub module: Option<&'static str>,
}

/// What a command's reply becomes for a RESP3 client. The instances are spoken to in RESP2;
/// Redis would answer a RESP3 client with richer types, so the sidecar converts (see
/// `sidecar/resp3.rs`). Everything not listed keeps its shape (nulls become `_`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resp3 {
    /// The same structure.
    Same,
    /// A flat key/value array becomes a map (HGETALL, HELLO, PUBSUB NUMSUB).
    Map,
    /// An array becomes a set (SMEMBERS, SINTER, SPOP with a count).
    Set,
    /// A bulk string becomes a double (ZSCORE, ZINCRBY).
    Double,
    /// An array of bulk strings or nils becomes doubles or nulls (ZMSCORE).
    Doubles,
    /// With `WITHSCORES`: a flat member/score list becomes `[member, score]` pairs, the scores
    /// doubles (ZRANGE, ZUNION, ...).
    WithScores,
    /// With a count and `WITHSCORES` / `WITHVALUES`: pairs; scores become doubles when
    /// `double` (ZRANDMEMBER, HRANDFIELD).
    RandPairs {
        /// Whether the second element of each pair is a score.
        double: bool,
    },
    /// ZPOPMIN/ZPOPMAX: `[member, score]` with a double score; with a count, a list of pairs.
    ZPop,
    /// BZPOPMIN/BZPOPMAX: `[key, member, score]` with a double score.
    BzPop,
    /// ZMPOP/BZMPOP: `[key, [[member, score], ...]]` with double scores.
    ZMPop,
    /// ZRANK/ZREVRANK WITHSCORE: `[rank, score]` with a double score.
    RankWithScore,
    /// ZADD with INCR: a double (or null).
    ZAdd,
    /// XREAD/XREADGROUP: a list of `[key, entries]` becomes a map of key to entries.
    XRead,
    /// XINFO STREAM: a map; with FULL, its groups and their consumers are maps too.
    XInfoStream,
    /// XINFO GROUPS/CONSUMERS: a list of maps.
    XInfoList,
    /// LCS with IDX: a map.
    Lcs,
    /// GEOPOS, and GEOSEARCH/GEORADIUS with WITHCOORD: coordinates become doubles.
    Geo,
    /// A bulk string becomes a verbatim string (INFO, CLIENT INFO, CLIENT LIST).
    Verbatim,
    /// An integer 1 or 0 becomes a boolean (VADD, VREM, VISMEMBER, VSETATTR).
    Boolean,
    /// VEMB: the components become doubles; with `RAW`, those after the quantization type
    /// and the raw blob.
    VEmb,
    /// VSIM: with `WITHSCORES` and/or `WITHATTRIBS`, a map of member to its score (a
    /// double), its attributes, or `[score, attributes]` with both (the flags are read from
    /// the arguments by `resp3::shape`).
    VSim {
        /// `WITHSCORES` is present.
        scores: bool,
        /// `WITHATTRIBS` is present.
        attribs: bool,
    },
    /// VLINKS WITHSCORES: each level's flat member/score list becomes a map with doubles.
    VLinks,
    /// COMMAND and its subcommands, whose replies nest maps and sets: asked of an instance in
    /// RESP3 directly.
    Introspection,
    /// Already in the client's protocol (pub/sub confirmations, push frames in RESP3): never
    /// converted.
    Raw,
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
    /// Pub/Sub, served through the sidecar's subscriptions on the instances
    /// (`sidecar/pubsub.rs`).
    PubSub(PubSub),
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

/// Which keys a write creates or overwrites without giving them an expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creates {
    /// None (or the command sets the expiry itself).
    Nothing,
    /// The key at this argument index (HSET's key, COPY's destination).
    Key(usize),
    /// Every other argument from index 1: MSET's keys.
    Pairs,
}

impl Creates {
    /// The indices of the created keys in a list of `argc` arguments.
    pub fn keys(self, argc: usize) -> Vec<usize> {
        match self {
            Creates::Nothing => vec![],
            Creates::Key(at) => vec![at],
            Creates::Pairs => (1..argc).step_by(2).collect(),
        }
        .into_iter()
        .filter(|i| *i < argc)
        .collect()
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
    /// `CLIENT CAPA capability...` (Valkey 8): the capabilities a client declares (`redirect`,
    /// for replies the sidecar never sends).
    ClientCapa,
    /// `CLIENT INFO`.
    ClientInfo,
    /// `CLIENT LIST [...]`: the sidecar's own clients.
    ClientList,
    /// `CLIENT REPLY ON|OFF|SKIP`.
    ClientReply,
    /// `CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p]... [BCAST] [OPTIN] [OPTOUT]`:
    /// client-side caching through the sidecar's invalidation connections
    /// (`sidecar/pubsub/tracking.rs`).
    ClientTracking,
    /// `CLIENT CACHING YES|NO` (OPTIN / OPTOUT tracking).
    ClientCaching,
    /// `CLIENT GETREDIR`.
    ClientGetRedir,
    /// `CLIENT TRACKINGINFO`.
    ClientTrackingInfo,
}

/// Pub/Sub commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSub {
    /// `SUBSCRIBE channel...`.
    Subscribe,
    /// `PSUBSCRIBE pattern...`.
    PSubscribe,
    /// `SSUBSCRIBE shardchannel...`.
    SSubscribe,
    /// `UNSUBSCRIBE [channel...]`.
    Unsubscribe,
    /// `PUNSUBSCRIBE [pattern...]`.
    PUnsubscribe,
    /// `SUNSUBSCRIBE [shardchannel...]`.
    SUnsubscribe,
    /// `PUBLISH channel message`.
    Publish,
    /// `SPUBLISH shardchannel message`.
    SPublish,
    /// `PUBSUB CHANNELS [pattern]`.
    Channels,
    /// `PUBSUB NUMPAT`.
    NumPat,
    /// `PUBSUB NUMSUB [channel...]`.
    NumSub,
    /// `PUBSUB SHARDCHANNELS [pattern]`.
    ShardChannels,
    /// `PUBSUB SHARDNUMSUB [shardchannel...]`.
    ShardNumSub,
}

/// Keyless commands sent to every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOut {
    /// `DBSIZE`: the sum.
    DbSize,
    /// `SCAN cursor ...`: the sidecar walks the instances one after the other, keeping the
    /// instance in its cursor.
    Scan,
    /// `RANDOMKEY`: ask instances in turn until one has a key it serves. Cheap, though not
    /// uniform over the fleet's keys.
    RandomKey,
    /// `KEYS pattern`: every instance's matches it serves, once each.
    Keys,
    /// `FLUSHDB` / `FLUSHALL`: every application key of every instance, only when the sidecar
    /// runs with `--allow-flush`.
    Flush,
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
    /// Not a command the table knows.
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
    pub keys: KeyIndices,
}

/// The positions of a command's keys: one is kept inline (most commands have one, and this
/// is made for every request), more in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyIndices {
    /// One key, at this index.
    One([usize; 1]),
    /// None, or several.
    List(Vec<usize>),
}

impl std::ops::Deref for KeyIndices {
    type Target = [usize];

    fn deref(&self) -> &[usize] {
        match self {
            KeyIndices::One(one) => one,
            KeyIndices::List(list) => list,
        }
    }
}

impl From<Vec<usize>> for KeyIndices {
    fn from(list: Vec<usize>) -> Self {
        match list.as_slice() {
            [one] => KeyIndices::One([*one]),
            _ => KeyIndices::List(list),
        }
    }
}

/// The keys of a command whose only key sits at a fixed position (GET, SET, HSET, INCR, …),
/// found without [`key_indices`]' general walk; `None` for any other shape. What it finds is
/// exactly what [`key_indices`] finds (a test holds the two together).
fn fixed_key(spec: &CommandSpec, argc: usize) -> Option<KeyIndices> {
    match spec.keys {
        [KeySpec::Range { first, last, step }]
            if *last >= 0
                && last.unsigned_abs() == *first
                && *step <= 1
                && spec.subcommands.is_empty()
                && spec.arity_ok(argc) =>
        {
            Some(if *first < argc {
                KeyIndices::One([*first])
            } else {
                KeyIndices::List(Vec::new())
            })
        }
        _ => None,
    }
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

    /// The command's name as the server spells it in "wrong number of arguments" errors.
    pub fn error_name(&self) -> &'static str {
        self.module.unwrap_or(self.name)
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

/// The command named `name` (case-insensitive), without allocating: the few commands of
/// its length and first letter (one, mostly) are compared. It runs for every request.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let &first = name.first()?;
    let index = by_length_and_letter();
    let candidates = index.get(bucket(name.len(), first))?;
    candidates
        .iter()
        .filter_map(|&i| table::COMMANDS.get(usize::from(i)))
        .find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Where a name of `len` bytes starting with `first` is filed in [`by_length_and_letter`].
/// Names differing only in case land in the same bucket (`& 0x1f` folds ASCII case).
fn bucket(len: usize, first: u8) -> usize {
    len.min(BUCKET_LENGTHS - 1) * 32 + usize::from(first & 0x1f)
}

/// Lengths [`bucket`] tells apart; longer names share the last row.
const BUCKET_LENGTHS: usize = 32;

/// The table's commands filed by length and first letter, made once.
fn by_length_and_letter() -> &'static [Vec<u16>] {
    static INDEX: std::sync::OnceLock<Vec<Vec<u16>>> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = vec![Vec::new(); BUCKET_LENGTHS * 32];
        for (i, spec) in table::COMMANDS.iter().enumerate() {
            let name = spec.name.as_bytes();
            if let (Some(&first), Ok(i)) = (name.first(), u16::try_from(i))
                && let Some(bucket) = index.get_mut(bucket(name.len(), first))
            {
                bucket.push(i);
            }
        }
        index
    })
}

/// Every top-level command the sidecar knows, sorted by name.
pub fn commands() -> &'static [CommandSpec] {
    table::COMMANDS
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
    let keys = match fixed_key(spec, args.len()) {
        Some(keys) => keys,
        None => key_indices(spec, args)?.into(),
    };
    Ok(Resolved { spec, keys })
}
