//! The command table: every command Redis 7.0 to 8.2 and Valkey 8 and 9 know, as data — its arity, how the sidecar
//! handles it, where its keys are, Redis' `write` flag and the sidecar's own flags (a read that
//! counts hits, a read that extends an adaptive TTL, the keys a write creates). Sorted by name
//! (a test checks it, so an entry is easy to find and never listed twice); its many short
//! names stay local to this file.

use super::FanOut as F;
use super::KeySpec::SortStore;
use super::Kind::*;
use super::LocalCommand as L;
use super::NumKeysErrors::*;
use super::PubSub as P;
use super::Split as S;
use super::TxnCommand as T;
use super::{CommandSpec, Creates, KeySpec, Kind, NumKeysErrors, Resp3};

const READ: bool = false;
const WRITE: bool = true;

const ADMIN: &str =
    "administrative commands act on a single Redis instance; run them on the instances directly";
const ONE_DB: &str = "the fleet has a single database, 0";
const CLUSTER: &str = "the sidecar presents a standalone Redis, not a Redis Cluster";
const REPLICATION: &str = "replication and failover are managed by the redis-fleet operator";
const FUNCTION: &str =
    "load functions on each instance directly; FCALL and FCALL_RO work once they are there";
const UNSUPPORTED: &str = "not supported by the sidecar";
const PER_CONNECTION: &str = "the sidecar shares its instance connections among its clients, \
     so one client's connection mode cannot be set on them";

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
        counts_hits: false,
        adaptive_read: false,
        creates: Creates::Nothing,
        subcommands: &[],
        resp3: Resp3::Same,
        module: None,
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
        counts_hits: false,
        adaptive_read: false,
        creates: Creates::Nothing,
        subcommands,
        resp3: Resp3::Same,
        module: None,
    }
}

/// The sidecar's flags, set on the entries below.
impl CommandSpec {
    /// A read whose nil reply is a miss ([`CommandSpec::counts_hits`]).
    const fn hits(self) -> Self {
        Self {
            counts_hits: true,
            ..self
        }
    }

    /// A read that extends an adaptive TTL ([`CommandSpec::adaptive_read`]).
    const fn adaptive(self) -> Self {
        Self {
            adaptive_read: true,
            ..self
        }
    }

    /// A write that creates keys without an expiry ([`CommandSpec::creates`]).
    const fn creates(self, creates: Creates) -> Self {
        Self { creates, ..self }
    }

    /// A reply whose RESP3 form differs ([`CommandSpec::resp3`]).
    const fn resp3(self, resp3: Resp3) -> Self {
        Self { resp3, ..self }
    }

    /// A command a module registers under `registered` ([`CommandSpec::module`]).
    const fn module(self, registered: &'static str) -> Self {
        Self {
            module: Some(registered),
            ..self
        }
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

// Sorted by name (a test checks the order). Arity, keys and the
// write flag are the servers' own, checked against real Redis 7.0 and 8.2 and Valkey 8.1 and
// 9.0 servers by tests/command_table.rs, which also knows which server lacks which command.
pub(super) static COMMANDS: &[CommandSpec] = &[
    c("acl", -2, Refused(ADMIN), &[], READ),
    c("append", 3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("asking", 1, Refused(CLUSTER), &[], READ),
    c("auth", -2, Local(L::Auth), &[], READ),
    c("bgrewriteaof", 1, Refused(ADMIN), &[], READ),
    c("bgsave", -1, Refused(ADMIN), &[], READ),
    c("bitcount", -2, SingleKey, &[key(1)], READ),
    c("bitfield", -2, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("bitfield_ro", -2, SingleKey, &[key(1)], READ),
    c("bitop", -4, SameInstance, &[key(2), range(3, -1, 1)], WRITE).creates(Creates::Key(2)),
    c("bitpos", -3, SingleKey, &[key(1)], READ),
    c("blmove", 6, Blocking, &[key(1), key(2)], WRITE),
    c("blmpop", -5, Blocking, &[numkeys(2, 3, Mpop)], WRITE),
    c("blpop", -3, Blocking, &[range(1, -2, 1)], WRITE),
    c("brpop", -3, Blocking, &[range(1, -2, 1)], WRITE),
    c("brpoplpush", 4, Blocking, &[key(1), key(2)], WRITE),
    c("bzmpop", -5, Blocking, &[numkeys(2, 3, Mpop)], WRITE).resp3(Resp3::ZMPop),
    c("bzpopmax", -3, Blocking, &[range(1, -2, 1)], WRITE).resp3(Resp3::BzPop),
    c("bzpopmin", -3, Blocking, &[range(1, -2, 1)], WRITE).resp3(Resp3::BzPop),
    container("client", -2, Container, CLIENT_SUBCOMMANDS),
    c("cluster", -2, Refused(CLUSTER), &[], READ),
    container("command", -1, Local(L::Command), COMMAND_SUBCOMMANDS).resp3(Resp3::Introspection),
    c("commandlog", -2, Refused(ADMIN), &[], READ),
    c("config", -2, Refused(ADMIN), &[], READ),
    c("copy", -3, SameInstance, &[key(1), key(2)], WRITE).creates(Creates::Key(2)),
    c("dbsize", 1, FanOut(F::DbSize), &[], READ),
    c("debug", -2, Refused(ADMIN), &[], READ),
    c("decr", 2, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("decrby", 3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("del", -2, MultiKey(S::Del), &[range(1, -1, 1)], WRITE),
    c("delifeq", 3, SingleKey, &[key(1)], WRITE),
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
    c("flushall", -1, FanOut(F::Flush), &[], WRITE),
    c("flushdb", -1, FanOut(F::Flush), &[], WRITE),
    c("function", -2, Refused(FUNCTION), &[], READ),
    c("geoadd", -5, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("geodist", -4, SingleKey, &[key(1)], READ),
    c("geohash", -2, SingleKey, &[key(1)], READ),
    c("geopos", -2, SingleKey, &[key(1)], READ).resp3(Resp3::Geo),
    c(
        "georadius",
        -6,
        SameInstance,
        &[key(1), keyword("STORE", 6), keyword("STOREDIST", 6)],
        WRITE,
    )
    .resp3(Resp3::Geo),
    c("georadius_ro", -6, SingleKey, &[key(1)], READ).resp3(Resp3::Geo),
    c(
        "georadiusbymember",
        -5,
        SameInstance,
        &[key(1), keyword("STORE", 5), keyword("STOREDIST", 5)],
        WRITE,
    )
    .resp3(Resp3::Geo),
    c("georadiusbymember_ro", -5, SingleKey, &[key(1)], READ).resp3(Resp3::Geo),
    c("geosearch", -7, SingleKey, &[key(1)], READ).resp3(Resp3::Geo),
    c("geosearchstore", -8, SameInstance, &[key(1), key(2)], WRITE).creates(Creates::Key(1)),
    c("get", 2, SingleKey, &[key(1)], READ).hits().adaptive(),
    c("getbit", 3, SingleKey, &[key(1)], READ),
    c("getdel", 2, SingleKey, &[key(1)], WRITE).hits(),
    c("getex", -2, SingleKey, &[key(1)], WRITE).hits(),
    c("getrange", 4, SingleKey, &[key(1)], READ)
        .hits()
        .adaptive(),
    c("getset", 3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("hdel", -3, SingleKey, &[key(1)], WRITE),
    c("hello", -1, Local(L::Hello), &[], READ).resp3(Resp3::Map),
    c("hexists", 3, SingleKey, &[key(1)], READ),
    c("hexpire", -6, SingleKey, &[key(1)], WRITE),
    c("hexpireat", -6, SingleKey, &[key(1)], WRITE),
    c("hexpiretime", -5, SingleKey, &[key(1)], READ),
    c("hget", 3, SingleKey, &[key(1)], READ).hits().adaptive(),
    c("hgetall", 2, SingleKey, &[key(1)], READ)
        .adaptive()
        .resp3(Resp3::Map),
    c("hgetdel", -5, SingleKey, &[key(1)], WRITE),
    c("hgetex", -5, SingleKey, &[key(1)], WRITE),
    c("hincrby", 4, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("hincrbyfloat", 4, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("hkeys", 2, SingleKey, &[key(1)], READ),
    c("hlen", 2, SingleKey, &[key(1)], READ),
    c("hmget", -3, SingleKey, &[key(1)], READ).adaptive(),
    c("hmset", -4, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("hpersist", -5, SingleKey, &[key(1)], WRITE),
    c("hpexpire", -6, SingleKey, &[key(1)], WRITE),
    c("hpexpireat", -6, SingleKey, &[key(1)], WRITE),
    c("hpexpiretime", -5, SingleKey, &[key(1)], READ),
    c("hpttl", -5, SingleKey, &[key(1)], READ),
    c("hrandfield", -2, SingleKey, &[key(1)], READ).resp3(Resp3::RandPairs { double: false }),
    c("hscan", -3, SingleKey, &[key(1)], READ),
    c("hset", -4, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    // Field expiries are not the key's: a hash HSETEX creates gets the category's default TTL.
    c("hsetex", -6, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("hsetnx", 4, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("hstrlen", 3, SingleKey, &[key(1)], READ),
    c("httl", -5, SingleKey, &[key(1)], READ),
    c("hvals", 2, SingleKey, &[key(1)], READ),
    c("incr", 2, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("incrby", 3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("incrbyfloat", 3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("info", -1, Local(L::Info), &[], READ).resp3(Resp3::Verbatim),
    c("keys", 2, FanOut(F::Keys), &[], READ),
    c("lastsave", 1, Refused(ADMIN), &[], READ),
    c("latency", -2, Refused(ADMIN), &[], READ),
    c("lcs", -3, SameInstance, &[range(1, 2, 1)], READ).resp3(Resp3::Lcs),
    c("lindex", 3, SingleKey, &[key(1)], READ).hits(),
    c("linsert", 5, SingleKey, &[key(1)], WRITE),
    c("llen", 2, SingleKey, &[key(1)], READ),
    c("lmove", 5, SameInstance, &[key(1), key(2)], WRITE).creates(Creates::Key(2)),
    c("lmpop", -4, SameInstance, &[numkeys(1, 2, Mpop)], WRITE),
    c("lolwut", -1, Refused(UNSUPPORTED), &[], READ),
    c("lpop", -2, SingleKey, &[key(1)], WRITE),
    c("lpos", -3, SingleKey, &[key(1)], READ),
    c("lpush", -3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("lpushx", -3, SingleKey, &[key(1)], WRITE),
    c("lrange", 4, SingleKey, &[key(1)], READ).adaptive(),
    c("lrem", 4, SingleKey, &[key(1)], WRITE),
    c("lset", 4, SingleKey, &[key(1)], WRITE),
    c("ltrim", 4, SingleKey, &[key(1)], WRITE),
    container("memory", -2, Container, MEMORY_SUBCOMMANDS),
    c("mget", -2, MultiKey(S::Mget), &[range(1, -1, 1)], READ),
    c("migrate", -6, Refused(ADMIN), &[], WRITE),
    c("module", -2, Refused(ADMIN), &[], READ),
    c("monitor", 1, Refused(ADMIN), &[], READ),
    c("move", 3, Refused(ONE_DB), &[], WRITE),
    c("mset", -3, MultiKey(S::Mset), &[range(1, -1, 2)], WRITE).creates(Creates::Pairs),
    c("msetnx", -3, SameInstance, &[range(1, -1, 2)], WRITE).creates(Creates::Pairs),
    c("multi", 1, Transaction(T::Multi), &[], READ),
    container("object", -2, Container, OBJECT_SUBCOMMANDS),
    c("persist", 2, SingleKey, &[key(1)], WRITE),
    c("pexpire", -3, SingleKey, &[key(1)], WRITE),
    c("pexpireat", -3, SingleKey, &[key(1)], WRITE),
    c("pexpiretime", 2, SingleKey, &[key(1)], READ),
    c("pfadd", -2, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("pfcount", -2, SameInstance, &[range(1, -1, 1)], READ),
    c("pfdebug", 3, Refused(ADMIN), &[], WRITE),
    c(
        "pfmerge",
        -2,
        SameInstance,
        &[key(1), range(2, -1, 1)],
        WRITE,
    )
    .creates(Creates::Key(1)),
    c("pfselftest", 1, Refused(ADMIN), &[], READ),
    c("ping", -1, Local(L::Ping), &[], READ),
    c("psetex", 4, SingleKey, &[key(1)], WRITE),
    c("psubscribe", -2, PubSub(P::PSubscribe), &[], READ).resp3(Resp3::Raw),
    c("psync", -3, Refused(REPLICATION), &[], READ),
    c("pttl", 2, SingleKey, &[key(1)], READ),
    c("publish", 3, PubSub(P::Publish), &[], READ),
    container("pubsub", -2, Container, PUBSUB_SUBCOMMANDS),
    c("punsubscribe", -1, PubSub(P::PUnsubscribe), &[], READ).resp3(Resp3::Raw),
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
    c("rpoplpush", 3, SameInstance, &[key(1), key(2)], WRITE).creates(Creates::Key(2)),
    c("rpush", -3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("rpushx", -3, SingleKey, &[key(1)], WRITE),
    c("sadd", -3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("save", 1, Refused(ADMIN), &[], READ),
    c("scan", -2, FanOut(F::Scan), &[], READ),
    c("scard", 2, SingleKey, &[key(1)], READ),
    container("script", -2, Container, SCRIPT_SUBCOMMANDS),
    c("sdiff", -2, SameInstance, &[range(1, -1, 1)], READ).resp3(Resp3::Set),
    c(
        "sdiffstore",
        -3,
        SameInstance,
        &[key(1), range(2, -1, 1)],
        WRITE,
    )
    .creates(Creates::Key(1)),
    c("select", 2, Local(L::Select), &[], READ),
    c("set", -3, SingleKey, &[key(1)], WRITE),
    c("setbit", 4, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("setex", 4, SingleKey, &[key(1)], WRITE),
    c("setnx", 3, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("setrange", 4, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("shutdown", -1, Refused(ADMIN), &[], READ),
    c("sinter", -2, SameInstance, &[range(1, -1, 1)], READ).resp3(Resp3::Set),
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
    )
    .creates(Creates::Key(1)),
    c("sismember", 3, SingleKey, &[key(1)], READ),
    c("slaveof", 3, Refused(REPLICATION), &[], READ),
    c("slowlog", -2, Refused(ADMIN), &[], READ),
    c("smembers", 2, SingleKey, &[key(1)], READ)
        .adaptive()
        .resp3(Resp3::Set),
    c("smismember", -3, SingleKey, &[key(1)], READ),
    c("smove", 4, SameInstance, &[key(1), key(2)], WRITE).creates(Creates::Key(2)),
    c("sort", -2, SameInstance, &[key(1), SortStore], WRITE),
    c("sort_ro", -2, SingleKey, &[key(1)], READ),
    c("spop", -2, SingleKey, &[key(1)], WRITE).resp3(Resp3::Set),
    c("spublish", 3, PubSub(P::SPublish), &[], READ),
    c("srandmember", -2, SingleKey, &[key(1)], READ),
    c("srem", -3, SingleKey, &[key(1)], WRITE),
    c("sscan", -3, SingleKey, &[key(1)], READ),
    c("ssubscribe", -2, PubSub(P::SSubscribe), &[], READ).resp3(Resp3::Raw),
    c("strlen", 2, SingleKey, &[key(1)], READ),
    c("subscribe", -2, PubSub(P::Subscribe), &[], READ).resp3(Resp3::Raw),
    c("substr", 4, SingleKey, &[key(1)], READ),
    c("sunion", -2, SameInstance, &[range(1, -1, 1)], READ).resp3(Resp3::Set),
    c(
        "sunionstore",
        -3,
        SameInstance,
        &[key(1), range(2, -1, 1)],
        WRITE,
    )
    .creates(Creates::Key(1)),
    c("sunsubscribe", -1, PubSub(P::SUnsubscribe), &[], READ).resp3(Resp3::Raw),
    c("swapdb", 3, Refused(ONE_DB), &[], WRITE),
    c("sync", 1, Refused(REPLICATION), &[], READ),
    c("time", 1, Local(L::Time), &[], READ),
    c("touch", -2, MultiKey(S::Touch), &[range(1, -1, 1)], READ),
    c("ttl", 2, SingleKey, &[key(1)], READ),
    c("type", 2, SingleKey, &[key(1)], READ),
    c("unlink", -2, MultiKey(S::Unlink), &[range(1, -1, 1)], WRITE),
    c("unsubscribe", -1, PubSub(P::Unsubscribe), &[], READ).resp3(Resp3::Raw),
    c("unwatch", 1, Transaction(T::Unwatch), &[], READ),
    // Vector sets (Redis 8): a module built into the server and always loaded.
    c("vadd", -5, SingleKey, &[key(1)], WRITE)
        .module("VADD")
        .creates(Creates::Key(1))
        .resp3(Resp3::Boolean),
    c("vcard", 2, SingleKey, &[key(1)], READ).module("VCARD"),
    c("vdim", 2, SingleKey, &[key(1)], READ).module("VDIM"),
    c("vemb", -3, SingleKey, &[key(1)], READ)
        .module("VEMB")
        .resp3(Resp3::VEmb),
    c("vgetattr", 3, SingleKey, &[key(1)], READ).module("VGETATTR"),
    c("vinfo", 2, SingleKey, &[key(1)], READ)
        .module("VINFO")
        .resp3(Resp3::Map),
    c("vismember", 3, SingleKey, &[key(1)], READ)
        .module("VISMEMBER")
        .resp3(Resp3::Boolean),
    c("vlinks", -3, SingleKey, &[key(1)], READ)
        .module("VLINKS")
        .resp3(Resp3::VLinks),
    c("vrandmember", -2, SingleKey, &[key(1)], READ).module("VRANDMEMBER"),
    c("vrem", 3, SingleKey, &[key(1)], WRITE)
        .module("VREM")
        .resp3(Resp3::Boolean),
    c("vsetattr", 4, SingleKey, &[key(1)], WRITE)
        .module("VSETATTR")
        .resp3(Resp3::Boolean),
    c("vsim", -4, SingleKey, &[key(1)], READ)
        .module("VSIM")
        .resp3(Resp3::VSim {
            scores: false,
            attribs: false,
        }),
    c("wait", 3, Refused(REPLICATION), &[], READ),
    c("waitaof", 4, Refused(REPLICATION), &[], READ),
    c("watch", -2, Transaction(T::Watch), &[range(1, -1, 1)], READ),
    c("xack", -4, SingleKey, &[key(1)], WRITE),
    c("xackdel", -6, SingleKey, &[key(1)], WRITE),
    c("xadd", -5, SingleKey, &[key(1)], WRITE).creates(Creates::Key(1)),
    c("xautoclaim", -6, SingleKey, &[key(1)], WRITE),
    c("xclaim", -6, SingleKey, &[key(1)], WRITE),
    c("xdel", -3, SingleKey, &[key(1)], WRITE),
    c("xdelex", -5, SingleKey, &[key(1)], WRITE),
    container("xgroup", -2, Container, XGROUP_SUBCOMMANDS),
    container("xinfo", -2, Container, XINFO_SUBCOMMANDS),
    c("xlen", 2, SingleKey, &[key(1)], READ),
    c("xpending", -3, SingleKey, &[key(1)], READ),
    c("xrange", -4, SingleKey, &[key(1)], READ),
    c("xread", -4, Blocking, &[streams(false)], READ).resp3(Resp3::XRead),
    c("xreadgroup", -7, Blocking, &[streams(true)], WRITE).resp3(Resp3::XRead),
    c("xrevrange", -4, SingleKey, &[key(1)], READ),
    c("xsetid", -3, SingleKey, &[key(1)], WRITE),
    c("xtrim", -4, SingleKey, &[key(1)], WRITE),
    c("zadd", -4, SingleKey, &[key(1)], WRITE)
        .creates(Creates::Key(1))
        .resp3(Resp3::ZAdd),
    c("zcard", 2, SingleKey, &[key(1)], READ),
    c("zcount", 4, SingleKey, &[key(1)], READ),
    c("zdiff", -3, SameInstance, &[numkeys(1, 2, Zset)], READ).resp3(Resp3::WithScores),
    c(
        "zdiffstore",
        -4,
        SameInstance,
        &[key(1), numkeys(2, 3, Zset)],
        WRITE,
    )
    .creates(Creates::Key(1)),
    c("zincrby", 4, SingleKey, &[key(1)], WRITE)
        .creates(Creates::Key(1))
        .resp3(Resp3::Double),
    c("zinter", -3, SameInstance, &[numkeys(1, 2, Zset)], READ).resp3(Resp3::WithScores),
    c("zintercard", -3, SameInstance, &[numkeys(1, 2, Zset)], READ),
    c(
        "zinterstore",
        -4,
        SameInstance,
        &[key(1), numkeys(2, 3, Zset)],
        WRITE,
    )
    .creates(Creates::Key(1)),
    c("zlexcount", 4, SingleKey, &[key(1)], READ),
    c("zmpop", -4, SameInstance, &[numkeys(1, 2, Mpop)], WRITE).resp3(Resp3::ZMPop),
    c("zmscore", -3, SingleKey, &[key(1)], READ).resp3(Resp3::Doubles),
    c("zpopmax", -2, SingleKey, &[key(1)], WRITE).resp3(Resp3::ZPop),
    c("zpopmin", -2, SingleKey, &[key(1)], WRITE).resp3(Resp3::ZPop),
    c("zrandmember", -2, SingleKey, &[key(1)], READ).resp3(Resp3::RandPairs { double: true }),
    c("zrange", -4, SingleKey, &[key(1)], READ)
        .adaptive()
        .resp3(Resp3::WithScores),
    c("zrangebylex", -4, SingleKey, &[key(1)], READ),
    c("zrangebyscore", -4, SingleKey, &[key(1)], READ).resp3(Resp3::WithScores),
    c("zrangestore", -5, SameInstance, &[key(1), key(2)], WRITE).creates(Creates::Key(1)),
    c("zrank", -3, SingleKey, &[key(1)], READ).resp3(Resp3::RankWithScore),
    c("zrem", -3, SingleKey, &[key(1)], WRITE),
    c("zremrangebylex", 4, SingleKey, &[key(1)], WRITE),
    c("zremrangebyrank", 4, SingleKey, &[key(1)], WRITE),
    c("zremrangebyscore", 4, SingleKey, &[key(1)], WRITE),
    c("zrevrange", -4, SingleKey, &[key(1)], READ).resp3(Resp3::WithScores),
    c("zrevrangebylex", -4, SingleKey, &[key(1)], READ),
    c("zrevrangebyscore", -4, SingleKey, &[key(1)], READ).resp3(Resp3::WithScores),
    c("zrevrank", -3, SingleKey, &[key(1)], READ).resp3(Resp3::RankWithScore),
    c("zscan", -3, SingleKey, &[key(1)], READ),
    c("zscore", 3, SingleKey, &[key(1)], READ).resp3(Resp3::Double),
    c("zunion", -3, SameInstance, &[numkeys(1, 2, Zset)], READ).resp3(Resp3::WithScores),
    c(
        "zunionstore",
        -4,
        SameInstance,
        &[key(1), numkeys(2, 3, Zset)],
        WRITE,
    )
    .creates(Creates::Key(1)),
];

static PUBSUB_SUBCOMMANDS: &[CommandSpec] = &[
    c("pubsub|channels", -2, PubSub(P::Channels), &[], READ),
    c("pubsub|help", 2, Local(L::Help), &[], READ),
    c("pubsub|numpat", 2, PubSub(P::NumPat), &[], READ),
    c("pubsub|numsub", -2, PubSub(P::NumSub), &[], READ).resp3(Resp3::Map),
    c(
        "pubsub|shardchannels",
        -2,
        PubSub(P::ShardChannels),
        &[],
        READ,
    ),
    c("pubsub|shardnumsub", -2, PubSub(P::ShardNumSub), &[], READ).resp3(Resp3::Map),
];

static CLIENT_SUBCOMMANDS: &[CommandSpec] = &[
    c("client|caching", 3, Local(L::ClientCaching), &[], READ),
    c("client|capa", -3, Local(L::ClientCapa), &[], READ),
    c("client|getname", 2, Local(L::ClientGetName), &[], READ),
    c("client|getredir", 2, Local(L::ClientGetRedir), &[], READ),
    c("client|help", 2, Local(L::Help), &[], READ),
    c("client|id", 2, Local(L::ClientId), &[], READ),
    c("client|import-source", 3, Refused(ADMIN), &[], READ),
    c("client|info", 2, Local(L::ClientInfo), &[], READ).resp3(Resp3::Verbatim),
    c("client|kill", -3, Refused(ADMIN), &[], READ),
    c("client|list", -2, Local(L::ClientList), &[], READ).resp3(Resp3::Verbatim),
    c("client|no-evict", 3, Refused(ADMIN), &[], READ),
    c("client|no-touch", 3, Refused(PER_CONNECTION), &[], READ),
    c("client|pause", -3, Refused(ADMIN), &[], READ),
    c("client|reply", 3, Local(L::ClientReply), &[], READ),
    c("client|setinfo", 4, Local(L::ClientSetInfo), &[], READ),
    c("client|setname", 3, Local(L::ClientSetName), &[], READ),
    c("client|tracking", -3, Local(L::ClientTracking), &[], READ),
    c(
        "client|trackinginfo",
        2,
        Local(L::ClientTrackingInfo),
        &[],
        READ,
    )
    .resp3(Resp3::Map),
    c("client|unblock", -3, Refused(ADMIN), &[], READ),
    c("client|unpause", 2, Refused(ADMIN), &[], READ),
];

static COMMAND_SUBCOMMANDS: &[CommandSpec] = &[
    c("command|count", 2, Local(L::CommandCount), &[], READ).resp3(Resp3::Introspection),
    c("command|docs", -2, Local(L::CommandDocs), &[], READ).resp3(Resp3::Introspection),
    c("command|getkeys", -3, Local(L::CommandGetKeys), &[], READ).resp3(Resp3::Introspection),
    c(
        "command|getkeysandflags",
        -3,
        Local(L::CommandGetKeysAndFlags),
        &[],
        READ,
    )
    .resp3(Resp3::Introspection),
    c("command|help", 2, Local(L::Help), &[], READ),
    c("command|info", -2, Local(L::CommandInfo), &[], READ).resp3(Resp3::Introspection),
    c("command|list", -2, Local(L::CommandList), &[], READ).resp3(Resp3::Introspection),
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
    c("script|show", 3, Refused(ADMIN), &[], READ),
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
    c("xinfo|consumers", 4, SingleKey, &[key(2)], READ).resp3(Resp3::XInfoList),
    c("xinfo|groups", 3, SingleKey, &[key(2)], READ).resp3(Resp3::XInfoList),
    c("xinfo|help", 2, Local(L::Help), &[], READ),
    c("xinfo|stream", -3, SingleKey, &[key(2)], READ).resp3(Resp3::XInfoStream),
];
