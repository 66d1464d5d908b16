//! The commands of today's servers through the sidecar, with the server as the oracle: the
//! same commands go to a server directly and to a sidecar in front of two servers of the same
//! version, over RESP2 and over RESP3, and the replies must be the same bytes; each key must
//! then be on exactly one instance. Hash-field expiry, HGETEX and HSETEX on Redis 8.2 and
//! Valkey 9.0; HGETDEL, XACKDEL/XDELEX and vector sets on Redis 8.2.
//!
//! The binaries come from `hack/redis-servers.sh` through `REDIS_FLEET_REDIS_8` and
//! `REDIS_FLEET_VALKEY_9` (`make test` sets them; unset, a server is skipped loudly, or the
//! test fails under CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use redis_fleet::routing::table::{RoutingTable, TtlRules};
use support::redis::server_from_env;
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

/// Redis 8.2 and Valkey 9.0 alike. Expiry times are absolute or far off, so that both sides
/// answer the same. (`_` stands for a space inside an argument.)
const HASH_FIELD_EXPIRY: &[&str] = &[
    "HSETEX {a}h FNX EX 100000 FIELDS 2 f1 v1 f2 v2",
    "HSETEX {a}h FNX EX 100000 FIELDS 1 f1 again",
    "HSETEX {a}h FXX KEEPTTL FIELDS 1 f1 v1b",
    "HSET {a}h f3 v3",
    "HGETEX {a}h FIELDS 3 f1 f2 nope",
    "HGETEX {a}h PERSIST FIELDS 1 f2",
    "HEXPIREAT {a}h 4102444800 FIELDS 2 f1 nope",
    "HEXPIRETIME {a}h FIELDS 3 f1 f2 nope",
    "HPEXPIREAT {a}h 4102444800123 FIELDS 1 f3",
    "HPEXPIRETIME {a}h FIELDS 2 f3 f2",
    "HTTL {a}h FIELDS 2 f2 nope",
    "HPTTL {a}missing FIELDS 1 f",
    "HEXPIRE {a}h 1000 NX FIELDS 2 f1 f2",
    "HEXPIRE {a}h 1000 XX FIELDS 1 f2",
    "HPERSIST {a}h FIELDS 3 f1 f2 nope",
    "HSETEX {b}h2 PX 100000000 FIELDS 2 x 1 y 2",
    "HPEXPIRE {b}h2 5000000 GT FIELDS 1 x",
    "HPERSIST {b}h2 FIELDS 1 y",
    "HGETEX {b}h2 EXAT 4102444800 FIELDS 1 y",
    "HEXPIRETIME {b}h2 FIELDS 1 y",
    "HGETALL {a}h",
    "HEXPIRE {a}h 0 FIELDS 1 f3",
    "HLEN {a}h",
    "TTL {a}h",
    "HEXPIRE {a}h 10 FIELDS 0",
    "HSETEX {a}h EX 10 FIELDS 2 f1",
    "ZADD {c}z 1 a 2.5 b",
    "ZRANK {c}z b WITHSCORE",
    "ZREVRANK {c}z a WITHSCORE",
];

/// Redis 8.2 only.
const REDIS_8: &[&str] = &[
    "HGETDEL {b}h2 FIELDS 2 x nope",
    "HGETDEL {b}h2 FIELDS 1 y",
    "EXISTS {b}h2",
    "XADD {d}s 1-1 f v",
    "XADD {d}s 2-1 f v",
    "XGROUP CREATE {d}s g 0",
    "XREADGROUP GROUP g c STREAMS {d}s >",
    "XACKDEL {d}s g KEEPREF IDS 2 1-1 9-9",
    "XDELEX {d}s IDS 2 2-1 9-9",
    "XLEN {d}s",
    "VADD {e}v VALUES 2 1 0 a",
    "VADD {e}v VALUES 2 0 1 b SETATTR {\"x\":1}",
    "VCARD {e}v",
    "VDIM {e}v",
    "VGETATTR {e}v b",
    "VRANDMEMBER {e}v 0",
    "VREM {e}v nope",
    "VCARD",
    "VCARD {e}v extra",
    // Not VLINKS: the graph's levels are drawn at random, so two servers differ.
    "VSIM {e}v ELE a WITHSCORES",
    "VSIM {e}v ELE a WITHATTRIBS",
    "VSIM {e}v ELE a WITHSCORES WITHATTRIBS",
    "VSIM {e}v ELE a",
    "VISMEMBER {e}v a",
    "VISMEMBER {e}v nope",
    "VSETATTR {e}v a {\"y\":2}",
    "VSETATTR {e}v nope {\"y\":2}",
    "VEMB {e}v a",
    "VEMB {e}v a RAW",
    "VEMB {e}v nope",
];

/// Replies that Redis types in RESP3 and the sidecar (which speaks RESP2 to its instances)
/// does not convert: in RESP3 they must differ — so this list shrinks when a conversion comes
/// — and in RESP2 they must not. None are left.
const RESP3_UNCONVERTED: &[&str] = &[];

fn args(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(|a| a.replace('_', " "))
        .collect()
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "⏎")
}

fn start(binary: &Path) -> RedisServer {
    RedisServer::start(RedisOptions {
        binary: Some(binary.to_path_buf()),
        ..RedisOptions::default()
    })
}

/// Runs `lines` directly and through a sidecar on two instances (fresh servers), in RESP2 or
/// RESP3; returns the mismatches (in RESP3, a line of `unconverted` that does not differ is
/// one).
fn compare(binary: &Path, lines: &[&str], resp3: bool, unconverted: &[&str]) -> Vec<String> {
    let direct = start(binary);
    let (a, b) = (start(binary), start(binary));
    let sidecar = Sidecar::start(&fleet(&a, &b), &[]);
    let mut theirs = RawConn::open(direct.port);
    let mut ours = RawConn::open(sidecar.port);
    if resp3 {
        for conn in [&mut theirs, &mut ours] {
            assert!(!conn.call_raw(&["HELLO", "3"]).starts_with(b"-"));
        }
    }
    let mut mismatches = Vec::new();
    for line in lines {
        let args = args(line);
        let want = theirs.call_raw(&args);
        let got = ours.call_raw(&args);
        if resp3 && unconverted.contains(line) {
            if want == got {
                mismatches.push(format!(
                    "RESP3 {line}: converted now; off RESP3_UNCONVERTED"
                ));
            }
        } else if want != got {
            mismatches.push(format!(
                "{} {line}\n   server:  {}\n   sidecar: {}",
                if resp3 { "RESP3" } else { "RESP2" },
                show(&want),
                show(&got)
            ));
        }
    }
    // Every key the direct server has is on exactly one instance, and both instances got some.
    let mut direct_conn = RawConn::open(direct.port);
    let keys = direct_conn.call_raw(&["KEYS", "*"]);
    let keys: Vec<String> = show(&keys)
        .split('⏎')
        .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .map(str::to_string)
        .collect();
    assert!(keys.len() >= 3, "{keys:?}");
    let (mut on_a, mut on_b) = (0, 0);
    for key in &keys {
        let here = |server: &RedisServer| {
            RawConn::open(server.port).call_raw(&["EXISTS", key.as_str()])[..] == b":1\r\n"[..]
        };
        match (here(&a), here(&b)) {
            (true, false) => on_a += 1,
            (false, true) => on_b += 1,
            other => mismatches.push(format!("{key}: on (a, b) = {other:?}")),
        }
    }
    assert!(on_a > 0 && on_b > 0, "keys all on one instance: {keys:?}");
    mismatches
}

fn check(binary: &Path, lines: &[&str], unconverted: &[&str]) {
    let mut mismatches = compare(binary, lines, false, unconverted);
    mismatches.extend(compare(binary, lines, true, unconverted));
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn redis_8_commands_through_the_sidecar_are_the_server_own() {
    let Some(binary) = server_from_env("REDIS_FLEET_REDIS_8", "Redis 8.2") else {
        return;
    };
    let all: Vec<&str> = HASH_FIELD_EXPIRY.iter().chain(REDIS_8).copied().collect();
    check(&binary, &all, RESP3_UNCONVERTED);
}

#[test]
fn valkey_9_commands_through_the_sidecar_are_the_server_own() {
    let Some(binary) = server_from_env("REDIS_FLEET_VALKEY_9", "Valkey 9.0") else {
        return;
    };
    check(&binary, HASH_FIELD_EXPIRY, &[]);
}

#[test]
fn client_no_touch_is_refused_with_its_reason() {
    let Some(binary) = server_from_env("REDIS_FLEET_REDIS_8", "Redis 8.2") else {
        return;
    };
    let a = start(&binary);
    let sidecar = Sidecar::start(&fleet(&a, &a), &[]);
    let mut conn = RawConn::open(sidecar.port);
    let reply = show(&conn.call_raw(&["CLIENT", "NO-TOUCH", "ON"]));
    assert!(
        reply
            .starts_with("-ERR 'client|no-touch' is not available through the redis-fleet sidecar")
            && reply.contains("shares its instance connections"),
        "{reply}"
    );
    assert_eq!(
        show(&conn.call_raw(&["CLIENT", "CAPA", "redirect"])),
        "+OK⏎"
    );
}
