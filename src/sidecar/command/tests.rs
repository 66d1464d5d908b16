//! Tests of the command table and key extraction.

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
    // Every command under its own name, in either case; one letter off is another command
    // or none.
    for spec in commands() {
        let upper = spec.name.to_ascii_uppercase();
        for name in [spec.name.as_bytes(), upper.as_bytes()] {
            assert_eq!(lookup(name).map(|s| s.name), Some(spec.name));
        }
        let mut off = spec.name.as_bytes().to_vec();
        off[0] ^= 0x40;
        assert!(lookup(&off).is_none_or(|s| s.name.as_bytes() == off.as_slice()));
        let long = format!("{}{}", spec.name, "x".repeat(40));
        assert!(lookup(long.as_bytes()).is_none(), "{long}");
    }
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
fn commands_of_redis_7_2_to_8_2_and_valkey() {
    // Hash-field expiry (Redis 7.4, Valkey 9): the key first, then the fields.
    ok("HEXPIRE h 10 NX FIELDS 2 a b", &["h"]);
    ok("hpexpire h 100 FIELDS 1 a", &["h"]);
    ok("HEXPIREAT h 1700000000 GT FIELDS 1 a", &["h"]);
    ok("HPEXPIREAT h 1700000000000 FIELDS 1 a", &["h"]);
    for read in ["HTTL", "HPTTL", "HEXPIRETIME", "HPEXPIRETIME", "HPERSIST"] {
        ok(&format!("{read} h FIELDS 2 a b"), &["h"]);
    }
    err(
        "HTTL h FIELDS",
        "wrong number of arguments for 'httl' command",
    );
    err(
        "HEXPIRE h 10 FIELDS",
        "wrong number of arguments for 'hexpire' command",
    );
    // HGETDEL, HGETEX, HSETEX (Redis 8.0; Valkey 9 has the last two).
    ok("HGETDEL h FIELDS 2 a b", &["h"]);
    ok("HGETEX h PX 100 FIELDS 1 a", &["h"]);
    ok("HGETEX h PERSIST FIELDS 1 a", &["h"]);
    ok("HSETEX h FNX EX 10 FIELDS 2 a 1 b 2", &["h"]);
    ok("hsetex h KEEPTTL FIELDS 1 a 1", &["h"]);
    err(
        "HSETEX h FIELDS 1 a",
        "wrong number of arguments for 'hsetex' command",
    );
    err(
        "HGETDEL h FIELDS 1",
        "wrong number of arguments for 'hgetdel' command",
    );
    // Streams (Redis 8.2), DELIFEQ (Valkey 9), ZRANK WITHSCORE (Redis 7.2).
    ok("XACKDEL s g KEEPREF IDS 2 1-0 2-0", &["s"]);
    ok("XDELEX s ACKED IDS 1 1-0", &["s"]);
    ok("DELIFEQ k v", &["k"]);
    ok("ZRANK z m WITHSCORE", &["z"]);
    ok("ZREVRANK z m", &["z"]);
    // Vector sets (Redis 8.0): a module's commands, whose arity errors name them as the
    // module registered them.
    ok("VADD v VALUES 2 1 0 a SETATTR {}", &["v"]);
    ok("VSIM v ELE a WITHSCORES COUNT 3", &["v"]);
    ok("VCARD v", &["v"]);
    ok("VEMB v a RAW", &["v"]);
    ok("VRANDMEMBER v", &["v"]);
    err("VCARD", "wrong number of arguments for 'VCARD' command");
    err("VCARD v x", "wrong number of arguments for 'VCARD' command");
    err(
        "vsetattr v a",
        "wrong number of arguments for 'VSETATTR' command",
    );
    assert_eq!(lookup(b"vadd").unwrap().module, Some("VADD"));
    assert_eq!(lookup(b"get").unwrap().error_name(), "get");
}

#[test]
fn connection_and_server_commands_of_redis_7_2_to_8_2_and_valkey() {
    let refused = |line: &str, name: &str| match resolve(&split(line)) {
        Err(CommandError::Refused { command, .. }) => assert_eq!(command, name, "{line}"),
        other => panic!("{line}: {other:?}"),
    };
    // The sidecar's instance connections are shared: no per-client connection mode.
    refused("CLIENT NO-TOUCH ON", "client|no-touch");
    refused("WAITAOF 1 0 100", "waitaof");
    refused("CLIENT IMPORT-SOURCE ON", "client|import-source");
    refused("COMMANDLOG GET 10 slow", "commandlog");
    refused("SCRIPT SHOW 0123", "script|show");
    // Valkey clients may declare capabilities; none needs anything of the sidecar.
    assert_eq!(
        resolve(&split("CLIENT CAPA redirect")).unwrap().spec.kind,
        Kind::Local(LocalCommand::ClientCapa)
    );
    assert_eq!(
        resolve(&split("client capa")).unwrap_err(),
        CommandError::WrongArity("client|capa")
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
    assert_eq!(
        (resolved.spec.name, resolved.keys.to_vec()),
        ("get", vec![1])
    );
    let resolved = resolve(&split("OBJECT encoding k")).unwrap();
    assert_eq!(
        (resolved.spec.name, resolved.keys.to_vec()),
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
        resolve(&split("FLUSHALL")).unwrap().spec.kind,
        Kind::FanOut(FanOut::Flush)
    );
    assert_eq!(
        resolve(&split("KEYS *")).unwrap().spec.kind,
        Kind::FanOut(FanOut::Keys)
    );
    assert_eq!(
        resolve(&split("MOVE k 1")).unwrap_err(),
        CommandError::Refused {
            command: "move",
            reason: table_reason("move"),
        }
    );
    assert_eq!(
        resolve(&split("SUBSCRIBE ch")).unwrap().spec.kind,
        Kind::PubSub(PubSub::Subscribe)
    );
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
    assert_eq!(kind("publish"), Kind::PubSub(PubSub::Publish));
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
                let args: Vec<&[u8]> = (0..len).map(|i| words[(i + shift) % words.len()]).collect();
                let keys = key_indices(spec, &args);
                if let Ok(keys) = &keys {
                    assert!(
                        keys.iter().all(|&k| k > 0 && k < args.len()),
                        "{}",
                        spec.name
                    );
                }
                // The shortcut for one key at a fixed place finds what the walk finds.
                if let Some(fixed) = fixed_key(spec, args.len()) {
                    assert_eq!(Ok(fixed.to_vec()), keys, "{} {len}", spec.name);
                }
                let _ = blocks(spec, &args);
            }
        }
    }
}

#[test]
fn the_sidecar_flags_mark_reads_and_key_creating_writes() {
    let flagged = |flag: fn(&CommandSpec) -> bool| -> Vec<&str> {
        commands()
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands))
            .filter(|c| flag(c))
            .map(|c| c.name)
            .collect()
    };
    assert_eq!(
        flagged(|c| c.counts_hits),
        ["get", "getdel", "getex", "getrange", "hget", "lindex"]
    );
    assert_eq!(
        flagged(|c| c.adaptive_read),
        [
            "get", "getrange", "hget", "hgetall", "hmget", "lrange", "smembers", "zrange"
        ]
    );
    let creates = |name: &str| lookup(name.as_bytes()).unwrap().creates;
    for name in [
        "hset", "hsetex", "incr", "lpush", "zadd", "xadd", "pfadd", "geoadd", "bitfield", "vadd",
    ] {
        assert_eq!(creates(name), Creates::Key(1), "{name}");
    }
    for name in ["sinterstore", "zunionstore", "pfmerge", "geosearchstore"] {
        assert_eq!(creates(name), Creates::Key(1), "{name}");
    }
    for name in ["bitop", "lmove", "rpoplpush", "smove", "copy"] {
        assert_eq!(creates(name), Creates::Key(2), "{name}");
    }
    assert_eq!(creates("mset"), Creates::Pairs);
    assert_eq!(creates("msetnx"), Creates::Pairs);
    // SET, SETEX, RESTORE, … set or keep an expiry themselves; reads create nothing.
    for name in ["set", "setex", "restore", "get", "del"] {
        assert_eq!(creates(name), Creates::Nothing, "{name}");
    }
    assert_eq!(Creates::Pairs.keys(6), [1, 3, 5]);
    assert_eq!(Creates::Key(2).keys(2), Vec::<usize>::new());
    // Every write the default TTL applies to, as the lists this flag replaced named them.
    let mut writers = [
        "setnx",
        "getset",
        "append",
        "incr",
        "incrby",
        "incrbyfloat",
        "decr",
        "decrby",
        "setrange",
        "setbit",
        "bitfield",
        "hset",
        "hsetnx",
        "hmset",
        "hsetex",
        "hincrby",
        "hincrbyfloat",
        "lpush",
        "rpush",
        "sadd",
        "zadd",
        "zincrby",
        "xadd",
        "pfadd",
        "geoadd",
        "vadd",
        "mset",
        "msetnx",
        "bitop",
        "lmove",
        "rpoplpush",
        "smove",
        "copy",
        "sinterstore",
        "sunionstore",
        "sdiffstore",
        "zunionstore",
        "zinterstore",
        "zdiffstore",
        "zrangestore",
        "pfmerge",
        "geosearchstore",
    ];
    writers.sort_unstable();
    assert_eq!(flagged(|c| c.creates != Creates::Nothing), writers);
}
