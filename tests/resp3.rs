//! RESP3 through the sidecar, with Redis as the oracle: the same commands are sent to a
//! redis-server directly and to a sidecar in front of two redis-servers, both over `HELLO 3`
//! connections, and the replies must be the same bytes — maps, sets, doubles, pairs, verbatim
//! strings and nulls where Redis sends them — although the sidecar speaks RESP2 to its
//! instances. The same commands over RESP2 must give the same bytes too (RESP2 is never
//! converted), and Redis' own RESP3 replies must convert to themselves (so an instance spoken
//! to in RESP3 would be served as well).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use redis_fleet::redis::resp::{Limits, Value, parse_value};
use redis_fleet::routing::table::{RoutingTable, TtlRules};
use redis_fleet::sidecar::resp3;
use support::resp::RawConn;
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{RedisOptions, RedisServer};

/// Keys spread over both instances (`{a}` … `{h}` hash to slots on either side of 8192).
fn fleet(a: &RedisServer, b: &RedisServer) -> RoutingTable {
    table(
        1,
        vec![("a", endpoint(a, None)), ("b", endpoint(b, None))],
        vec![category(
            "default",
            &[],
            TtlRules::default(),
            &[(0, 8191, "a"), (8192, 16383, "b")],
        )],
    )
}

/// Commands whose replies are compared byte for byte, in order (state builds up).
const EXACT: &[&str] = &[
    "PING",
    "ECHO hello",
    "SET {a}s v",
    "GET {a}s",
    "GET {a}missing",
    "INCRBYFLOAT {a}f 1.5",
    "MGET {a}s {b}nokey {a}missing",
    "EXISTS {a}s {b}h",
    "HSET {b}h f1 v1 f2 v2",
    "HGETALL {b}h",
    "HGETALL {b}nohash",
    "HRANDFIELD {b}h 5 WITHVALUES",
    "HRANDFIELD {b}h 5",
    "HMGET {b}h f1 nope",
    "SADD {c}s1 a b c",
    "SADD {c}s2 b c d",
    "SMEMBERS {c}s1",
    "SMEMBERS {c}none",
    "SINTER {c}s1 {c}s2",
    "SUNION {c}s1 {c}s2",
    "SDIFF {c}s1 {c}s2",
    "SMISMEMBER {c}s1 a z",
    "SPOP {c}s2 10",
    "ZADD {d}z 1 a 2.5 b 3 c",
    "ZSCORE {d}z b",
    "ZSCORE {d}z nope",
    "ZINCRBY {d}z 1.5 a",
    "ZMSCORE {d}z a nope c",
    "ZADD {d}z INCR 1 c",
    "ZADD {d}z XX INCR 1 nope",
    "ZADD {d}z 1e300 big -inf small",
    "ZRANGE {d}z 0 -1",
    "ZRANGE {d}z 0 -1 WITHSCORES",
    "ZRANGE {d}z -inf +inf BYSCORE WITHSCORES",
    "ZRANGEBYSCORE {d}z -inf +inf WITHSCORES",
    "ZREVRANGE {d}z 0 1 WITHSCORES",
    "ZREVRANGEBYSCORE {d}z +inf -inf WITHSCORES LIMIT 0 2",
    "ZRANK {d}z b",
    "ZREVRANK {d}z b",
    "ZUNION 2 {d}z {d}z2 WITHSCORES",
    "ZINTER 1 {d}z WITHSCORES",
    "ZDIFF 1 {d}z WITHSCORES",
    "ZRANDMEMBER {d}z 10 WITHSCORES",
    "ZPOPMIN {d}z",
    "ZPOPMAX {d}z 1",
    "ZPOPMIN {d}empty",
    "ZPOPMIN {d}empty 2",
    "ZADD {d}z 5 x 6 y",
    "ZMPOP 1 {d}z MIN COUNT 2",
    "ZMPOP 1 {d}empty MIN",
    "BZPOPMIN {d}z 0.1",
    "BZPOPMAX {d}empty 0.01",
    "BZMPOP 0.01 1 {d}z MAX",
    "ZSCAN {d}z 0",
    "XADD {e}s 1-1 f v",
    "XADD {e}s 2-1 f2 v2",
    "XRANGE {e}s - +",
    "XREVRANGE {e}s + - COUNT 1",
    "XREAD COUNT 10 STREAMS {e}s 0",
    "XREAD STREAMS {e}s $",
    "XGROUP CREATE {e}s g 0",
    "XREADGROUP GROUP g c COUNT 1 STREAMS {e}s >",
    "XINFO STREAM {e}s",
    "XINFO GROUPS {e}s",
    "XPENDING {e}s g",
    "SET {f}a ohmytext",
    "SET {f}b mynewtext",
    "LCS {f}a {f}b",
    "LCS {f}a {f}b LEN",
    "LCS {f}a {f}b IDX",
    "LCS {f}a {f}b IDX MINMATCHLEN 2 WITHMATCHLEN",
    "GEOADD {g}geo 13.361389 38.115556 Palermo 15.087269 37.502669 Catania",
    "GEOPOS {g}geo Palermo nope",
    "GEODIST {g}geo Palermo Catania km",
    "GEOHASH {g}geo Palermo",
    "GEOSEARCH {g}geo FROMLONLAT 15 37 BYRADIUS 200 km ASC WITHCOORD WITHDIST WITHHASH",
    "GEOSEARCH {g}geo FROMLONLAT 15 37 BYRADIUS 200 km ASC WITHDIST",
    "GEORADIUS_RO {g}geo 15 37 200 km WITHCOORD ASC",
    "GEORADIUSBYMEMBER_RO {g}geo Palermo 200 km WITHCOORD WITHDIST ASC",
    "RPUSH {h}l a b c",
    "LRANGE {h}l 0 -1",
    "BLPOP {h}empty 0.01",
    "LMPOP 1 {h}l LEFT COUNT 2",
    "LPOS {h}l c",
    "TYPE {b}h",
    "OBJECT ENCODING {b}h",
    "TTL {a}s",
    "EVAL return 1 0",
    "EVAL return_{1,'a',false} 0",
    "EVAL return_redis.call('HGETALL',KEYS[1]) 1 {b}h",
    "MULTI",
    "SET {b}t 1",
    "HGETALL {b}h",
    "EXEC",
    "MULTI",
    "HGETALL {a}h2",
    "ZSCORE {a}z2 m",
    "SMEMBERS {a}s3",
    "ZRANGE {a}z2 0 -1 WITHSCORES",
    "EXEC",
    "COMMAND COUNT",
    "COMMAND INFO get zadd",
    "COMMAND DOCS get",
    "COMMAND GETKEYSANDFLAGS set k v",
    "GET",
    "NOSUCHCOMMAND x",
];

/// Commands whose replies carry times: compared by their shape (types and map keys).
const SHAPE_ONLY: &[&str] = &["XINFO STREAM {e}s FULL", "XINFO CONSUMERS {e}s g"];

fn args(line: &str) -> Vec<String> {
    // `_` stands for a space inside one argument (script bodies).
    line.split_whitespace()
        .map(|a| a.replace('_', " "))
        .collect()
}

/// The structure of a value: types, map keys, string payloads hidden behind integers.
fn skeleton(value: &Value) -> String {
    match value {
        Value::Integer(_) => "int".into(),
        Value::Map(pairs) => format!(
            "map{{{}}}",
            pairs
                .iter()
                .map(|(k, v)| format!("{}={}", skeleton_key(k), skeleton(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(skeleton).collect::<Vec<_>>().join(",")
        ),
        other => format!("{other:?}"),
    }
}

fn skeleton_key(k: &Value) -> String {
    k.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| format!("{k:?}"))
}

/// A reply with its sets sorted: a set's order is the server's hash order, which differs
/// between two servers.
fn unordered(raw: &[u8]) -> Value {
    fn sort(v: Value) -> Value {
        match v {
            Value::Set(items) => {
                let mut items: Vec<Value> = items.into_iter().map(sort).collect();
                items.sort_by_key(|i| format!("{i:?}"));
                Value::Set(items)
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sort).collect()),
            Value::Map(pairs) => {
                Value::Map(pairs.into_iter().map(|(k, v)| (sort(k), sort(v))).collect())
            }
            other => other,
        }
    }
    sort(parse_value(raw, &Limits::replies()).unwrap().unwrap().0)
}

/// A RESP2 array of strings, sorted (a set's members come in the server's hash order).
fn sorted_strings(raw: &[u8]) -> Value {
    match parse_value(raw, &Limits::replies()).unwrap().unwrap().0 {
        Value::Array(mut items) if items.iter().all(|i| i.as_bytes().is_some()) => {
            items.sort_by_key(|i| i.as_bytes().cloned());
            Value::Array(items)
        }
        other => other,
    }
}

fn hello3(conn: &mut RawConn) -> Value {
    let reply = conn.call(&["HELLO", "3"]);
    assert!(matches!(reply, Value::Map(_)), "HELLO 3: {reply:?}");
    reply
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "⏎")
}

#[test]
fn resp3_replies_through_the_sidecar_are_redis_own() {
    let direct = RedisServer::start(RedisOptions::default());
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let sidecar = Sidecar::start(&fleet(&a, &b), &[]);

    let mut theirs = RawConn::open(direct.port);
    let mut ours = RawConn::open(sidecar.port);
    let their_hello = hello3(&mut theirs);
    let our_hello = hello3(&mut ours);
    let keys = |v: &Value| match v {
        Value::Map(p) => p.iter().map(|(k, _)| skeleton_key(k)).collect::<Vec<_>>(),
        _ => vec![],
    };
    assert_eq!(keys(&our_hello), keys(&their_hello));

    let mut mismatches = Vec::new();
    let mut converted = 0;
    for line in EXACT {
        let args = args(line);
        let want = theirs.call_raw(&args);
        let got = ours.call_raw(&args);
        if want != got && unordered(&want) != unordered(&got) {
            mismatches.push(format!(
                "{line}\n   redis:   {}\n   sidecar: {}",
                show(&want),
                show(&got)
            ));
        }
        // Redis' own RESP3 reply is a fixed point of the conversion.
        let again = resp3::convert(&want, &resp3::shape(&args));
        if again != want {
            mismatches.push(format!(
                "{line}: RESP3 input changed by the conversion\n   {}\n   {}",
                show(&want),
                show(&again)
            ));
        }
        if want.first().is_some_and(|t| b"%~,=>|#(_".contains(t)) {
            converted += 1;
        }
    }
    for line in SHAPE_ONLY {
        let args = args(line);
        let want = theirs.call(&args);
        let got = ours.call(&args);
        if skeleton(&want) != skeleton(&got) {
            mismatches.push(format!(
                "{line}\n   redis:   {}\n   sidecar: {}",
                skeleton(&want),
                skeleton(&got)
            ));
        }
    }
    // Sidecar-made replies in their RESP3 types.
    assert!(matches!(ours.cmd("INFO"), Value::Verbatim { .. }));
    assert!(matches!(ours.cmd("CLIENT INFO"), Value::Verbatim { .. }));
    match ours.cmd("CLIENT INFO") {
        Value::Verbatim { text, .. } => {
            assert!(String::from_utf8_lossy(&text).contains("resp=3"))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(converted >= 20, "only {converted} replies used RESP3 types");

    // HELLO 2 switches back: RESP2 bytes again.
    assert!(matches!(ours.call(&["HELLO", "2"]), Value::Array(_)));
    assert_eq!(&ours.call_raw(&["GET", "{a}missing"])[..], b"$-1\r\n");
    assert_eq!(
        &ours.call_raw(&["HELLO", "4"])[..],
        &theirs.call_raw(&["HELLO", "4"])[..]
    );
}

#[test]
fn resp2_replies_are_unchanged_bytes() {
    let direct = RedisServer::start(RedisOptions::default());
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let sidecar = Sidecar::start(&fleet(&a, &b), &[]);
    let mut theirs = RawConn::open(direct.port);
    let mut ours = RawConn::open(sidecar.port);
    let mut mismatches = Vec::new();
    for line in EXACT.iter().filter(|l| !l.starts_with("COMMAND")) {
        let args = args(line);
        let want = theirs.call_raw(&args);
        let got = ours.call_raw(&args);
        if want != got && sorted_strings(&want) != sorted_strings(&got) {
            mismatches.push(format!(
                "{line}\n   redis:   {}\n   sidecar: {}",
                show(&want),
                show(&got)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn malformed_resp3_from_a_client_gets_what_redis_answers() {
    let direct = RedisServer::start(RedisOptions::default());
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let sidecar = Sidecar::start(&fleet(&a, &b), &[]);
    // RESP3 types are not requests: inside a request they are a protocol error (the
    // connection closes); at the start of one, Redis reads an inline command. The sidecar
    // answers as Redis does, and goes on serving others.
    for bytes in [
        &b"%1\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n,1.5\r\n",
        b"*1\r\n_\r\n",
        b"*2\r\n$4\r\nECHO\r\n#t\r\n",
        b"*2\r\n$4\r\nECHO\r\n=5\r\ntxt:a\r\n",
        b"*1\r\n>1\r\n$4\r\nPING\r\n",
    ] {
        let mut answers = Vec::new();
        for port in [direct.port, sidecar.port] {
            let mut conn = RawConn::open(port);
            conn.set_timeout(std::time::Duration::from_millis(500));
            conn.send(&["HELLO", "3"]);
            conn.read().unwrap();
            conn.send_raw(bytes);
            let mut replies = Vec::new();
            while let Some(reply) = conn.read_raw() {
                replies.push(show(&reply));
            }
            answers.push(replies);
        }
        assert_eq!(answers[1], answers[0], "{}", show(bytes));
        assert!(!answers[0].is_empty());
    }
    let mut conn = RawConn::open(sidecar.port);
    assert_eq!(conn.cmd("PING"), Value::Simple("PONG".into()));
    assert_eq!(parse_value(b"%1\r\n:1\r\n", &Limits::replies()), Ok(None));
}
