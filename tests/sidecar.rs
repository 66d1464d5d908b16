//! The sidecar with real redis-servers and real clients (`redis-cli`, the `redis` crate):
//! the fleet looks like one Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis_fleet::routing::Resolver;
use redis_fleet::routing::table::{Migration, RoutingTable, TtlRules};
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{RedisOptions, RedisServer, series_value};

const MB: u64 = 1024 * 1024;

fn no_ttl() -> TtlRules {
    TtlRules::default()
}

/// Two instances: `auth:` on a, `user:` on b, everything else split by slot.
fn two(a: &RedisServer, b: &RedisServer, version: u64, auth_ttl: TtlRules) -> RoutingTable {
    table(
        version,
        vec![
            ("a", endpoint(a, Some("a-redis"))),
            ("b", endpoint(b, Some("b-redis"))),
        ],
        vec![
            category("auth", &["auth:", "session:"], auth_ttl, &[(0, 16383, "a")]),
            category("user", &["user:"], no_ttl(), &[(0, 16383, "b")]),
            category(
                "default",
                &[],
                no_ttl(),
                &[(0, 8191, "a"), (8192, 16383, "b")],
            ),
        ],
    )
}

fn servers() -> (RedisServer, RedisServer) {
    let opts = |p: &str| RedisOptions {
        maxmemory: 30 * MB,
        password: Some(p.into()),
        ..RedisOptions::default()
    };
    (
        RedisServer::start(opts("pa")),
        RedisServer::start(opts("pb")),
    )
}

const SECRETS: [(&str, &str, &str); 2] =
    [("a-redis", "password", "pa"), ("b-redis", "password", "pb")];

fn cli(sidecar: &Sidecar, args: &[&str]) -> String {
    let out = sidecar.cli().args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn clients_see_one_database_and_keys_land_where_resolve_says() {
    let (a, b) = servers();
    let t = two(&a, &b, 1, no_ttl());
    let sidecar = Sidecar::start(&t, &SECRETS);
    let resolver = Resolver::new(t).unwrap();

    // redis-cli, unchanged, as if it were one Redis.
    assert_eq!(cli(&sidecar, &["PING"]), "PONG");
    assert_eq!(cli(&sidecar, &["SET", "auth:token:1", "t1"]), "OK");
    assert_eq!(cli(&sidecar, &["GET", "auth:token:1"]), "t1");
    assert_eq!(cli(&sidecar, &["SELECT", "0"]), "OK");

    // The redis crate, many keys: each lands on the instance resolve names, nowhere else.
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = (0..300)
        .map(|i| match i % 3 {
            0 => format!("user:{i}"),
            1 => format!("session:{i}"),
            _ => format!("misc:{i}"),
        })
        .collect();
    for k in &keys {
        let _: () = conn.set(k, format!("v-{k}")).await.unwrap();
    }
    let mut on = BTreeMap::new();
    for (name, server) in [("a", &a), ("b", &b)] {
        let c = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        on.insert(name, c);
    }
    for k in &keys {
        let want = resolver
            .instance_name(resolver.resolve(k.as_bytes()).target)
            .to_owned();
        for (name, c) in on.iter_mut() {
            let v: Option<String> = c.get(k).await.unwrap();
            assert_eq!(v.is_some(), *name == want, "{k} should live on {want} only");
        }
    }

    // MGET across instances answers in the client's order, nils included.
    let ask = ["user:0", "session:1", "misc:2", "nope", "user:3", "misc:5"];
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&ask)
        .query_async(&mut conn)
        .await
        .unwrap();
    let expected: Vec<Option<String>> = ask
        .iter()
        .map(|k| (*k != "nope").then(|| format!("v-{k}")))
        .collect();
    assert_eq!(values, expected);

    // MSET / EXISTS / DEL across instances.
    let _: () = redis::cmd("MSET")
        .arg(&["user:m", "1", "session:m", "2", "misc:m", "3"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let n: i64 = redis::cmd("EXISTS")
        .arg(&["user:m", "session:m", "misc:m", "none"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 3);
    let n: i64 = redis::cmd("DEL")
        .arg(&["user:m", "session:m", "misc:m"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 3);

    // SCAN walks the whole fleet (heartbeats and other bookkeeping hidden).
    let mut cursor = 0u64;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(50)
            .query_async(&mut conn)
            .await
            .unwrap();
        seen.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut expected: std::collections::BTreeSet<String> = keys.iter().cloned().collect();
    expected.insert("auth:token:1".into());
    assert_eq!(seen, expected);
    assert!(!seen.iter().any(|k| k.starts_with("redisfleet:")));

    // Refused administrative commands say why.
    let err = redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not available through the redis-fleet sidecar"),
        "{err}"
    );
    // Reserved keys stay reserved.
    assert!(cli(&sidecar, &["GET", "redisfleet:sidecar:x"]).contains("reserved"));
}

#[tokio::test]
async fn transactions_and_scripts_work_on_one_instance_and_fail_clearly_across() {
    let (a, b) = servers();
    let sidecar = Sidecar::start(&two(&a, &b, 1, no_ttl()), &SECRETS);
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // Same instance: MULTI/EXEC works.
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("session:c")
        .cmd("INCRBY")
        .arg("auth:c")
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((x, y), (1, 5));

    // Across instances: a clear error, the transaction discarded.
    let mut raw = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"MULTI\r\nSET auth:1 a\r\nSET user:1 b\r\nEXEC\r\nGET auth:1\r\n")
        .unwrap();
    let text = read_until(&mut raw, b"$-1\r\n");
    assert!(
        text.starts_with("+OK\r\n+QUEUED\r\n-CROSSINSTANCE"),
        "{text}"
    );
    assert!(text.contains("-EXECABORT"), "{text}");

    // Scripts: one instance fine, two refused.
    let v: i64 = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])")
        .arg(2)
        .arg("auth:s")
        .arg("session:s")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 1);
    let err = redis::cmd("EVAL")
        .arg("return 1")
        .arg(2)
        .arg("auth:s")
        .arg("user:s")
        .query_async::<i64>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CROSSINSTANCE"), "{err}");

    // WATCH: optimistic locking works through the sidecar.
    let mut c2 = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut tx = sidecar.client().get_connection().unwrap();
    redis::cmd("WATCH").arg("auth:w").exec(&mut tx).unwrap();
    let _: () = c2.set("auth:w", "changed").await.unwrap();
    let res: Option<(String,)> = redis::pipe()
        .atomic()
        .set("auth:w", "mine")
        .ignore()
        .get("auth:w")
        .query(&mut tx)
        .unwrap();
    assert_eq!(res, None, "EXEC aborted: the watched key changed");
    let v: String = c2.get("auth:w").await.unwrap();
    assert_eq!(v, "changed");

    // Blocking commands wait on a connection of their own while others go on.
    let client = sidecar.client();
    let waiter = tokio::spawn(async move {
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("user:queue")
            .arg(5)
            .query_async(&mut c)
            .await
            .unwrap();
        got
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = conn.set("auth:during", "1").await.unwrap();
    let _: () = conn.rpush("user:queue", "job").await.unwrap();
    assert_eq!(
        waiter.await.unwrap(),
        Some(("user:queue".to_owned(), "job".to_owned()))
    );
}

fn read_until(stream: &mut TcpStream, end: &[u8]) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.ends_with(end) && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn category_ttl_defaults_and_caps_are_applied() {
    let (a, b) = servers();
    let rules = TtlRules {
        default_ms: Some(3_600_000),
        max_ms: Some(7_200_000),
        adaptive: false,
    };
    let sidecar = Sidecar::start(&two(&a, &b, 1, rules), &SECRETS);
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let direct = a.client().get_multiplexed_async_connection().await.unwrap();
    let pttl = |k: &'static str| {
        let mut d = direct.clone();
        async move {
            redis::cmd("PTTL")
                .arg(k)
                .query_async::<i64>(&mut d)
                .await
                .unwrap()
        }
    };

    let _: () = conn.set("auth:plain", "v").await.unwrap();
    let t = pttl("auth:plain").await;
    assert!((3_590_000..=3_600_000).contains(&t), "default applied: {t}");

    let _: () = redis::cmd("SET")
        .arg("auth:long")
        .arg("v")
        .arg("EX")
        .arg(86_400)
        .query_async(&mut conn)
        .await
        .unwrap();
    let t = pttl("auth:long").await;
    assert!((7_190_000..=7_200_000).contains(&t), "capped at max: {t}");

    let _: () = redis::cmd("EXPIRE")
        .arg("auth:long")
        .arg(999_999)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl("auth:long").await <= 7_200_000);

    let _: () = conn.hset("session:h", "f", "v").await.unwrap();
    let t = pttl("session:h").await;
    assert!(
        (3_590_000..=3_600_000).contains(&t),
        "HSET gets the default too: {t}"
    );

    let _: () = redis::cmd("SET")
        .arg("auth:short")
        .arg("v")
        .arg("PX")
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl("auth:short").await <= 5000,
        "shorter expiries are kept"
    );

    let err = redis::cmd("PERSIST")
        .arg("auth:plain")
        .query_async::<i64>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TTL cap"), "{err}");

    // Keys created by multi-key commands (destinations, MSETNX) get the rules too.
    let _: () = conn.rpush("auth:src", &["a", "b"]).await.unwrap();
    let _: String = redis::cmd("LMOVE")
        .arg("auth:src")
        .arg("auth:dst")
        .arg("LEFT")
        .arg("RIGHT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let t = pttl("auth:dst").await;
    assert!(
        (3_590_000..=3_600_000).contains(&t),
        "LMOVE destination: {t}"
    );
    let _: i64 = redis::cmd("MSETNX")
        .arg("auth:m1")
        .arg("v")
        .arg("session:m2")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in ["auth:m1", "session:m2"] {
        let t = pttl(k).await;
        assert!((3_590_000..=3_600_000).contains(&t), "MSETNX {k}: {t}");
    }

    // Inside MULTI: expiries are capped, written keys get the default (right after EXEC).
    let (_, _): (i64, i64) = redis::pipe()
        .atomic()
        .hset("auth:tx", "f", "v")
        .expire("auth:long", 999_999)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl("auth:long").await <= 7_200_000,
        "EXPIRE in MULTI capped"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let t = pttl("auth:tx").await;
        if (3_590_000..=3_600_000).contains(&t) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HSET in MULTI gets the default: {t}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = redis::pipe()
        .atomic()
        .cmd("PERSIST")
        .arg("auth:tx")
        .query_async::<(i64,)>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TTL cap"), "{err}");

    // Other categories are untouched.
    let _: () = conn.set("user:1", "v").await.unwrap();
    let mut db = b.client().get_multiplexed_async_connection().await.unwrap();
    let t: i64 = redis::cmd("PTTL")
        .arg("user:1")
        .query_async(&mut db)
        .await
        .unwrap();
    assert_eq!(t, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_loses_no_request_and_drops_no_connection() {
    let (a, b) = servers();
    let sidecar = Sidecar::start(&two(&a, &b, 1, no_ttl()), &SECRETS);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let client = sidecar.client();
        let stop = stop.clone();
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            // One connection each for the whole run: a dropped connection fails the worker.
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let key = format!("misc:counter:{w}");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v: u64 = c
                    .incr(&key, 1)
                    .await
                    .expect("an INCR failed during reloads");
                n += 1;
                assert_eq!(v, n, "counter {key} lost an increment");
                acked.fetch_add(1, Ordering::Relaxed);
            }
            n
        }));
    }
    // Waits until the workers have had 50 more requests answered (under table `v`).
    let answered_under = |v: u64| {
        let acked = acked.clone();
        async move {
            let before = acked.load(Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(20);
            while acked.load(Ordering::Relaxed) < before + 50 {
                assert!(Instant::now() < deadline, "the workers stalled under v{v}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Ten new versions while the workers run (TTL rules change, routes stay). Each is written
    // once the one before is in use and the workers have had requests answered under it, so
    // every reload lands among requests however slow the machine is.
    for v in 2..12 {
        answered_under(v - 1).await;
        let ttl = TtlRules {
            default_ms: Some(60_000 * v),
            max_ms: None,
            adaptive: false,
        };
        sidecar.update_table(&two(&a, &b, v, ttl));
        sidecar.wait_for_version(v).await;
    }
    answered_under(11).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert_eq!(total, acked.load(Ordering::Relaxed));
    let metrics = sidecar.metrics();
    // The first table and ten new versions, each loaded once.
    let reloads = series_value(&metrics, "redisfleet_sidecar_routing_reloads_total");
    assert_eq!(reloads, Some(11.0), "{metrics}");
    assert!(
        metrics.contains("redisfleet_sidecar_routing_reload_errors_total 0"),
        "{metrics}"
    );
    // Connections to the instances were reused across versions, not reopened.
    assert!(
        metrics.contains("redisfleet_sidecar_backend_connections{redis_instance=\"a\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_dead_instance_answers_unavailable_fast_for_its_keys_only() {
    let (a, mut b) = servers();
    let sidecar = Sidecar::start(&two(&a, &b, 1, no_ttl()), &SECRETS);
    // The client waits as long as it takes: a stall of a loaded machine must not turn the
    // sidecar's answer into the client's own timeout.
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let _: () = conn.set("user:1", "x").await.unwrap();
    b.kill();
    // The first request may be the one that notices; then the lane is down.
    let _ = conn.get::<_, Option<String>>("user:1").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every answer is the error. The fastest of five shows that the error needs no wait for a
    // connect or reply timeout (each 1 s); a stall of a loaded machine slows one request, not
    // all five.
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let err = conn.get::<_, Option<String>>("user:1").await.unwrap_err();
        fastest = fastest.min(started.elapsed());
        assert!(err.to_string().contains("UNAVAILABLE"), "{err}");
        assert!(err.to_string().contains("instance b"), "{err}");
    }
    assert!(
        fastest < Duration::from_millis(200),
        "the fastest took {fastest:?}"
    );
    // Keys of the live instance are unaffected.
    let _: () = conn.set("auth:still", "ok").await.unwrap();
    let v: String = conn.get("auth:still").await.unwrap();
    assert_eq!(v, "ok");
    // And when b is back, its keys are served again.
    b.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if conn.set::<_, _, ()>("user:2", "y").await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "b never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn malformed_bytes_get_a_protocol_error_and_never_crash_it() {
    let (a, b) = servers();
    let mut sidecar = Sidecar::start(&two(&a, &b, 1, no_ttl()), &SECRETS);
    for garbage in [
        &b"*2\r\n$3\r\nGET\r\n$-5\r\n"[..],
        b"*abc\r\n",
        b"*1\r\n$99999999999\r\n",
        b"SET \"unbalanced\r\n",
        b"*2\r\n$3\r\nGET\r\n$3\r\nabcdef\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(garbage).unwrap();
        let mut reply = Vec::new();
        // The sidecar closes the connection after the error: EOF (or a reset, when bytes it
        // never read are still queued), never the 5 s read timeout.
        if let Err(e) = s.read_to_end(&mut reply) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "{garbage:?}: the connection stayed open ({e})"
            );
        }
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("-ERR Protocol error"),
            "{garbage:?} → {text:?}"
        );
    }
    // Random bytes in bulk.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
        let bytes: Vec<u8> = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state & 0xff) as u8
            })
            .collect();
        let _ = s.write_all(&bytes);
    }
    assert!(sidecar.is_running(), "{}", sidecar.log_tail(20));
    assert_eq!(cli(&sidecar, &["PING"]), "PONG");
}

/// Publishes `base` again as version 2 with the whole `user` category migrating from `b` to
/// `a` (the operator's flip), and waits until `sidecar` routes by it.
async fn migrate_user_to_a(sidecar: &Sidecar, base: &RoutingTable) -> Migration {
    migrate_user_to_a_serving(sidecar, base, None).await
}

/// [`migrate_user_to_a`], the table saying whether `a` served the range already.
async fn migrate_user_to_a_serving(
    sidecar: &Sidecar,
    base: &RoutingTable,
    target_serves: Option<bool>,
) -> Migration {
    let mut flipped = base.clone();
    flipped.version = 2;
    let migration = Migration {
        category: "user".into(),
        start: 0,
        end: 16383,
        from: "b".into(),
        to: "a".into(),
        epoch: 2,
        target_serves,
    };
    flipped.migrating.push(migration.clone());
    sidecar.update_table(&flipped);
    sidecar.wait_for_version(2).await;
    migration
}

/// Starts importing the `user:` range on `b` the way the rebalance Job does: mover token,
/// importing marker on the source, imported marker on the target (none for a move into a range
/// the target served already, `migration.target_serves`). Returns the mover.
async fn start_importing(
    b: &RedisServer,
    a: &RedisServer,
    migration: &Migration,
) -> redis_fleet::redis::protocol::mover::Mover {
    use redis_fleet::redis::protocol::mover::Mover;
    use redis_fleet::redis::protocol::names;
    let mover = Mover {
        policy: "test/test".into(),
        token: names::mover_token(2, 1),
    };
    let mut src = b.client().get_multiplexed_async_connection().await.unwrap();
    let mut dst = a.client().get_multiplexed_async_connection().await.unwrap();
    mover.claim(&mut src).await.unwrap();
    mover.claim(&mut dst).await.unwrap();
    let serves = migration.target_serves == Some(true);
    mover
        .set_marker(
            &mut src,
            &names::importing("test/test", migration),
            true,
            serves,
        )
        .await
        .unwrap();
    if !serves {
        mover
            .set_marker(
                &mut dst,
                &names::imported("test/test", migration),
                true,
                false,
            )
            .await
            .unwrap();
    }
    mover
}

/// Moves every `user:` key from `b` to `a` the way the rebalance Job does (mover token,
/// importing marker, imported marker, take → restore → finish), in small batches, until none
/// is left on `b`.
async fn move_all_user_keys(b: &RedisServer, a: &RedisServer, migration: &Migration) -> u64 {
    let mover = start_importing(b, a, migration).await;
    let mut src = b.client().get_multiplexed_async_connection().await.unwrap();
    let mut dst = a.client().get_multiplexed_async_connection().await.unwrap();
    let mut moved = 0;
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("user:*")
            .query_async(&mut src)
            .await
            .unwrap();
        let tombs: Vec<String> = redis::cmd("KEYS")
            .arg("redisfleet:tomb:user:*")
            .query_async(&mut src)
            .await
            .unwrap();
        let mut all: Vec<bytes::Bytes> = keys.into_iter().map(bytes::Bytes::from).collect();
        all.extend(
            tombs
                .iter()
                .map(|t| bytes::Bytes::from(t.trim_start_matches("redisfleet:tomb:").to_owned())),
        );
        if all.is_empty() {
            return moved;
        }
        for batch in all.chunks(3) {
            // A pause in transit, as a slow Job has: commands on these keys wait.
            moved += support::redis::move_batch(
                &mover,
                &mut src,
                &mut dst,
                batch,
                "redisfleet:group:test:1:",
                Duration::from_millis(2),
            )
            .await as u64;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_range_is_served_through_the_guard_while_its_keys_move() {
    let (a, b) = servers();
    let base = two(&a, &b, 1, no_ttl());
    let sidecar = Sidecar::start(&base, &SECRETS);
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Data on b (user:), with a TTL on one key.
    for i in 0..50 {
        let _: () = conn.set(format!("user:{i}"), i).await.unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("user:ttl")
        .arg("t")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = conn.set("user:counter", 1000).await.unwrap();

    // The operator flips the user category to migrate from b to a.
    let migration = migrate_user_to_a(&sidecar, &base).await;
    let mut on_a = a.client().get_multiplexed_async_connection().await.unwrap();
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();

    // Announced, not importing: everything still runs on the source, new keys included.
    let _: i64 = conn.incr("user:counter", 1).await.unwrap();
    let _: () = conn.set("user:new", "n").await.unwrap();
    let there: bool = on_b.exists("user:new").await.unwrap();
    assert!(there, "nothing moves before the Job says so");

    // Concurrent INCRs of one key while the Job moves every key: none is lost.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = sidecar.client();
        tasks.push(tokio::spawn(async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            for _ in 0..25 {
                let _: i64 = c.incr("user:counter", 1).await.unwrap();
            }
        }));
    }
    let moved = move_all_user_keys(&b, &a, &migration).await;
    for t in tasks {
        t.await.unwrap();
    }
    assert!(moved >= 52, "{moved}");
    let v: i64 = conn.get("user:counter").await.unwrap();
    assert_eq!(v, 1201);

    // Every key reads back, and lives on a only; new keys go to a.
    for i in 0..50 {
        let v: i64 = conn.get(format!("user:{i}")).await.unwrap();
        assert_eq!(v, i);
        let there: bool = on_a.exists(format!("user:{i}")).await.unwrap();
        let left: bool = on_b.exists(format!("user:{i}")).await.unwrap();
        assert!(there && !left, "user:{i} moved");
    }
    let _: () = conn.set("user:after", "x").await.unwrap();
    let there: bool = on_a.exists("user:after").await.unwrap();
    assert!(
        there,
        "an absent key of an importing range lives on the target"
    );
    // The TTL travelled with the key, never longer.
    let t: i64 = redis::cmd("PTTL")
        .arg("user:ttl")
        .query_async(&mut on_a)
        .await
        .unwrap();
    assert!((50_000..=60_000).contains(&t), "{t}");
    // A delete during migration does not come back.
    let _: () = conn.del("user:0").await.unwrap();
    let gone: Option<i64> = conn.get("user:0").await.unwrap();
    assert_eq!(gone, None);
    // No tombstones left behind.
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("redisfleet:tomb:*")
        .query_async(&mut on_b)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_moved_keys_ask_the_target_first_and_only_where_it_imports() {
    use redis_fleet::redis::protocol::names;
    let (a, b) = servers();
    let base = two(&a, &b, 1, no_ttl());
    let sidecar = Sidecar::start(&base, &SECRETS);
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for i in 0..40 {
        let _: () = conn.set(format!("user:{i}"), i).await.unwrap();
    }
    let migration = migrate_user_to_a(&sidecar, &base).await;
    let served = "redisfleet_sidecar_reads_on_target_total";
    let missed = "redisfleet_sidecar_reads_not_on_target_total";

    // Nothing moved: reads go through the guard, which runs them on the source.
    for i in 0..40 {
        let v: i64 = conn.get(format!("user:{i}")).await.unwrap();
        assert_eq!(v, i);
    }
    assert_eq!(sidecar.metric(served), 0.0);
    assert_eq!(sidecar.metric(missed), 0.0);

    // Everything moved: after the first reads found their keys moved (the guard's `ASK`),
    // reads ask the target first and take one round trip.
    move_all_user_keys(&b, &a, &migration).await;
    let _: () = conn.set("user:0", "written after the move").await.unwrap();
    for round in 0..5 {
        for i in 1..40 {
            let v: i64 = conn.get(format!("user:{i}")).await.unwrap();
            assert_eq!(v, i, "round {round}");
        }
        let v: String = conn.get("user:0").await.unwrap();
        assert_eq!(v, "written after the move");
        let many: Vec<i64> = conn.mget(&["user:1", "user:2", "user:3"]).await.unwrap();
        assert_eq!(many, [1, 2, 3]);
    }
    let on_target = sidecar.metric(served);
    let known = sidecar.metric("redisfleet_sidecar_reads_known_moved_total");
    // 205 reads, the first 17 through the guard (the 40 before the move weigh against); once
    // the target served a key first, later reads of it go to the target alone.
    assert!(
        on_target + known >= 150.0,
        "{on_target} reads served by the target first, {known} by the target alone"
    );
    assert!(known >= 100.0, "{known} reads of keys known moved");
    // Missing keys go through the guard too: nil, never an error.
    let none: Option<String> = conn.get("user:missing").await.unwrap();
    assert_eq!(none, None);

    // Without its imported marker the target's copies are not trusted, however the reads went
    // so far (a move into a range the target already served keeps its live data on the
    // source where the source has it): a copy only the target has is not read there. (A key
    // this sidecar has not read: one it found on the target beside the marker is off the
    // source for the rest of this table, whatever is done to the marker afterwards.)
    let mut on_a = a.client().get_multiplexed_async_connection().await.unwrap();
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    let _: () = on_a
        .del(names::imported("test/test", &migration))
        .await
        .unwrap();
    let _: () = on_a.set("user:40", "the target's old copy").await.unwrap();
    let _: () = on_b.set("user:40", "live on the source").await.unwrap();
    let missed_before = sidecar.metric(missed);
    for _ in 0..5 {
        let v: String = conn.get("user:40").await.unwrap();
        assert_eq!(v, "live on the source");
    }
    assert!(sidecar.metric(missed) > missed_before);
}

/// Keys known moved (`target_first::KnownMoved`) are read on the target alone, in one round
/// trip; what proves nothing for later is not taken for knowledge: an `ASK` to a read (it marks
/// no slot group, so a script of the group may still create the key on the source) or the
/// guard running a command on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_known_moved_are_read_on_the_target_alone_and_a_read_proves_nothing() {
    use redis_fleet::redis::protocol::names;
    let (a, b) = servers();
    let base = two(&a, &b, 1, no_ttl());
    let sidecar = Sidecar::start(&base, &SECRETS);
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = conn.set("user:kept", "on the source").await.unwrap();
    let migration = migrate_user_to_a(&sidecar, &base).await;
    let mut on_a = a.client().get_multiplexed_async_connection().await.unwrap();
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    // The Job keeps the plan's slot group states: a script runs on the source while its groups
    // are untouched by the move.
    let _: () = on_b
        .set(names::slot_groups("test/test", 2), names::GROUPS_OPEN)
        .await
        .unwrap();
    start_importing(&b, &a, &migration).await;
    let known = "redisfleet_sidecar_reads_known_moved_total";

    // The first write's `ASK` in the move has the sidecar ask the source whether such `ASK`s
    // prove their keys moved for good (here they do: the plan keeps group states, the target
    // did not serve the range); the answer counts for the writes after it.
    let _: () = conn.set("user:first", "1").await.unwrap();
    // A write of a key the source does not have: the guard's `ASK` (which marks its slot
    // group moving), the target. From then on its reads go to the target alone.
    let _: () = conn.set("user:written", "w").await.unwrap();
    assert!(on_a.exists::<_, bool>("user:written").await.unwrap());
    for _ in 0..5 {
        let v: String = conn.get("user:written").await.unwrap();
        assert_eq!(v, "w");
    }
    assert_eq!(sidecar.metric(known), 5.0);
    // Deleted, it is missing there, and still known: nothing brings it back to the source.
    let _: () = conn.del("user:written").await.unwrap();
    let gone: Option<String> = conn.get("user:written").await.unwrap();
    assert_eq!(gone, None);
    assert_eq!(sidecar.metric(known), 6.0);
    let _: () = conn.set("user:written", "again").await.unwrap();
    let v: String = conn.get("user:written").await.unwrap();
    assert_eq!(v, "again");
    assert!(!on_b.exists::<_, bool>("user:written").await.unwrap());

    // A read of a key on neither side: the guard's `ASK`, nil on the target. It marked no
    // group, so a script of the key's group still runs on the source and may create the key
    // there: the next read must find it there, not take the earlier `ASK` for knowledge.
    let fresh: Option<String> = conn.get("user:fresh").await.unwrap();
    assert_eq!(fresh, None);
    let _: () = redis::cmd("EVAL")
        .arg("return redis.call('SET', KEYS[1], ARGV[1])")
        .arg(1)
        .arg("user:fresh")
        .arg("from a script")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        on_b.exists::<_, bool>("user:fresh").await.unwrap(),
        "the script ran on the source (its group untouched by the move)"
    );
    for _ in 0..3 {
        let v: String = conn.get("user:fresh").await.unwrap();
        assert_eq!(v, "from a script");
    }
    // A key the guard ran on the source is not known moved either.
    for _ in 0..3 {
        let v: String = conn.get("user:kept").await.unwrap();
        assert_eq!(v, "on the source");
    }
    assert_eq!(sidecar.metric(known), 7.0);

    // What the write's `ASK` rests on: it marked the key's slot group moving, so a script of
    // that group no longer runs on the source (it waits for the Job to move the group whole;
    // there is no Job here, so after 2 s the client is told to retry).
    let mut patient = sidecar
        .client()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let refused: redis::RedisResult<()> = redis::cmd("EVAL")
        .arg("return redis.call('SET', KEYS[1], ARGV[1])")
        .arg(1)
        .arg("user:written")
        .arg("from a script")
        .query_async(&mut patient)
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.code() == Some("TRYAGAIN")),
        "{refused:?}"
    );
    assert!(!on_b.exists::<_, bool>("user:written").await.unwrap());

    // A new table version starts knowing nothing: its first read of the key goes through the
    // guard again (or the target first), never on an earlier version's knowledge.
    let mut next = base.clone();
    next.version = 3;
    next.migrating.push(migration.clone());
    sidecar.update_table(&next);
    sidecar.wait_for_version(3).await;
    let v: String = conn.get("user:written").await.unwrap();
    assert_eq!(v, "again");
    assert_eq!(sidecar.metric(known), 7.0);
    // Known again in this version (the target served it first, beside the marker).
    for _ in 0..20 {
        let v: String = conn.get("user:written").await.unwrap();
        assert_eq!(v, "again");
    }
    assert!(sidecar.metric(known) > 7.0);

    // The target fails over while this sidecar is still on the migrating table: the
    // operator's notice fences it, the source serves the range again (its importing marker
    // removed once the failover table is out) and takes writes from sidecars on that table.
    // A read of the known key is not refused for the fenced target: the guard answers.
    let fence = |conn| async move {
        let mut conn = conn;
        redis_fleet::redis::protocol::fence::raise(&mut conn, "test/test", &[("a".to_owned(), 4)])
            .await
            .unwrap();
        conn
    };
    let mut on_b = fence(on_b).await;
    let mut on_a = fence(on_a).await;
    redis_fleet::redis::protocol::fence::close_older_connections(&mut on_a, "test/test", 4)
        .await
        .unwrap();
    let _: () = on_b
        .del(names::importing("test/test", &migration))
        .await
        .unwrap();
    let _: () = on_b
        .set("user:written", "after the failover")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read: redis::RedisResult<String> = conn.get("user:written").await;
        match read {
            Ok(v) if v == "after the failover" => break,
            other => assert!(
                Instant::now() < deadline,
                "the known key is still read on the fenced target: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `user:` range of `b` draining into `a`, which served it already (a legacy instance
/// emptied into the fleet), as the Job runs it: importing, the plan's slot group states open,
/// and the keys and slot groups sidecars ask for moved (`job`, until aborted).
struct ServedDrain {
    a: RedisServer,
    b: RedisServer,
    sidecar: Sidecar,
    /// Through the sidecar.
    conn: redis::aio::MultiplexedConnection,
    on_a: redis::aio::MultiplexedConnection,
    on_b: redis::aio::MultiplexedConnection,
    migration: Migration,
    job: tokio::task::JoinHandle<()>,
}

async fn served_drain() -> ServedDrain {
    use redis_fleet::redis::protocol::names;
    let (a, b) = servers();
    let base = two(&a, &b, 1, no_ttl());
    let sidecar = Sidecar::start(&base, &SECRETS);
    let conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let on_a = a.client().get_multiplexed_async_connection().await.unwrap();
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    let migration = migrate_user_to_a_serving(&sidecar, &base, Some(true)).await;
    let mover = start_importing(&b, &a, &migration).await;
    let _: () = on_b
        .set(names::slot_groups("test/test", 2), names::GROUPS_OPEN)
        .await
        .unwrap();
    let job = serve_urgent_keys(&b, &a, mover);
    ServedDrain {
        a,
        b,
        sidecar,
        conn,
        on_a,
        on_b,
        migration,
        job,
    }
}

/// In a move into a range its target served already (a legacy instance drained into the
/// fleet), the guard's `ASK` to a write proves nothing for later (a sidecar of an earlier
/// release runs a script there by its declared keys, which may create the asked key on the
/// source); a script of this release waits for its slot groups to move whole and runs on the
/// target, and reads find what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_into_a_served_range_takes_no_ask_for_proof_that_a_key_moved() {
    // (Every part is kept until the end: the servers stop when dropped.)
    let ServedDrain {
        a: _a,
        b: _b,
        sidecar,
        mut conn,
        mut on_a,
        mut on_b,
        migration: _,
        job: _job,
    } = served_drain().await;
    let _: () = on_b.set("user:meta", "on the source").await.unwrap();

    // The first write's `ASK` has the sidecar ask the source what `ASK`s prove; the next
    // write's would count, were they proof.
    let _: () = conn.set("user:first", "1").await.unwrap();
    let _: () = conn.set("user:job", "written on the target").await.unwrap();
    assert!(on_a.exists::<_, bool>("user:job").await.unwrap());
    let _: () = redis::cmd("EVAL")
        .arg("return redis.call('SET', ARGV[1], ARGV[2])")
        .arg(1)
        .arg("user:meta")
        .arg("user:job")
        .arg("from a script")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A script of a served range never runs on the source (it could write a key the target
    // holds, whose copy the move keeps): its declared key moved first, then it ran on the
    // target.
    assert!(!on_b.exists::<_, bool>("user:job").await.unwrap());
    assert!(!on_b.exists::<_, bool>("user:meta").await.unwrap());
    for _ in 0..3 {
        let v: String = conn.get("user:job").await.unwrap();
        assert_eq!(v, "from a script");
    }
    assert_eq!(
        sidecar.metric("redisfleet_sidecar_reads_known_moved_total"),
        0.0
    );
}

/// In a move into a range its target served already, once the Job wrote the legacy source's
/// roster (every key it held), a write that replaces keys the roster lacks goes straight to the
/// target; everything else still takes the guard: the fleet's copy wins over a stale legacy
/// one, a legacy key is read where it is, a write of it waits for its move, and a key a pod
/// wrote to the legacy Redis straight after the roster is seen by `INCR` and `DEL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_into_a_served_range_sends_blind_writes_of_keys_the_legacy_roster_lacks_straight_to_the_fleet()
 {
    use redis_fleet::redis::protocol::mover::Mover;
    use redis_fleet::redis::protocol::names;
    use redis_fleet::redis::protocol::roster::{Covered, Roster};
    use redis_fleet::routing::slots::SlotRange;
    const BLIND_WRITES: &str = "redisfleet_sidecar_blind_writes_to_target_total";
    // (Every part is kept until the end: the servers stop when dropped.)
    let ServedDrain {
        a: _a,
        b: _b,
        sidecar,
        mut conn,
        mut on_a,
        mut on_b,
        migration: _,
        job: _job,
    } = served_drain().await;
    // The legacy Redis: a key of its own, and a stale copy of one the fleet holds.
    let _: () = on_b.set("user:legacy", "legacy").await.unwrap();
    let _: () = on_b.set("user:both", "stale").await.unwrap();
    let _: () = on_a.set("user:both", "fleet").await.unwrap();
    let name = names::roster("test/test", 2);

    // No roster yet: every write takes the guard.
    for i in 0..3 {
        let _: () = conn.set(format!("user:early:{i}"), i).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(sidecar.metric(BLIND_WRITES), 0.0);

    // The Job's roster: every key of the legacy Redis.
    // (Sized for many keys: 200 kB, read in pieces.)
    let mut roster = Roster::with_capacity(
        100_000,
        vec![Covered {
            category: "user".into(),
            range: SlotRange::new(0, 16383),
        }],
    );
    for key in ["user:legacy", "user:both"] {
        roster.insert(key.as_bytes());
    }
    let mover = Mover {
        policy: "test/test".into(),
        token: names::mover_token(2, 1),
    };
    mover
        .set_roster(&mut on_b, &name, &roster.encode())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sidecar.metric(BLIND_WRITES) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the sidecar never used the roster"
        );
        let _: () = conn.set("user:probe", "p").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Blind writes of keys the roster lacks: straight to the target.
    let off = sidecar.metric(BLIND_WRITES);
    let _: () = conn.set("user:fresh", 1).await.unwrap();
    let _: () = conn.set_ex("user:fresh:ttl", "t", 100).await.unwrap();
    let _: () = conn
        .mset(&[("user:m1", "1"), ("user:m2", "2")])
        .await
        .unwrap();
    assert_eq!(sidecar.metric(BLIND_WRITES) - off, 3.0);
    for key in ["user:fresh", "user:fresh:ttl", "user:m1", "user:m2"] {
        assert!(on_a.exists::<_, bool>(key).await.unwrap(), "{key}");
        assert!(!on_b.exists::<_, bool>(key).await.unwrap(), "{key}");
    }

    // Everything else takes the guard: reads, writes that read first, deletes, and any
    // command on a key the roster holds.
    let off = sidecar.metric(BLIND_WRITES);
    let n: i64 = conn.incr("user:fresh", 1).await.unwrap();
    assert_eq!(n, 2);
    let got: Vec<Option<String>> = conn.mget(&["user:fresh", "user:none"]).await.unwrap();
    assert_eq!(got, [Some("2".to_owned()), None]);
    let deleted: i64 = conn.del("user:early:0").await.unwrap();
    assert_eq!(
        deleted, 1,
        "written through the guard's ASK before the roster"
    );
    let v: String = conn.get("user:both").await.unwrap();
    assert_eq!(v, "fleet", "the stale legacy copy was read");
    let v: String = conn.get("user:legacy").await.unwrap();
    assert_eq!(v, "legacy");
    let got: Vec<String> = conn.mget(&["user:fresh", "user:legacy"]).await.unwrap();
    assert_eq!(got, ["2", "legacy"]);
    let deleted: i64 = conn.del("user:both").await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(
        conn.get::<_, Option<String>>("user:both").await.unwrap(),
        None
    );
    let _: () = conn.set("user:legacy", "rewritten").await.unwrap();
    let v: String = conn.get("user:legacy").await.unwrap();
    assert_eq!(v, "rewritten");
    for key in ["user:both", "user:legacy"] {
        assert!(
            !on_b.exists::<_, bool>(key).await.unwrap(),
            "{key} is still on the legacy Redis"
        );
    }
    assert_eq!(
        on_a.get::<_, Option<String>>("user:both").await.unwrap(),
        None
    );

    // Keys a pod writes to the legacy Redis straight, after the roster: what reads them first
    // sees them; a blind write replaces one, and wins over it when it moves.
    let _: () = on_b.set("user:late:count", 10).await.unwrap();
    let _: () = on_b.set("user:late:gone", "x").await.unwrap();
    let _: () = on_b.set("user:late:read", "straight").await.unwrap();
    let n: i64 = conn.incr("user:late:count", 1).await.unwrap();
    assert_eq!(n, 11);
    let deleted: i64 = conn.del("user:late:gone").await.unwrap();
    assert_eq!(deleted, 1);
    let v: String = conn.get("user:late:read").await.unwrap();
    assert_eq!(v, "straight");
    assert_eq!(sidecar.metric(BLIND_WRITES), off);
    let _: () = on_b.set("user:late:set", "straight").await.unwrap();
    let _: () = conn.set("user:late:set", "sidecar").await.unwrap();
    assert_eq!(sidecar.metric(BLIND_WRITES) - off, 1.0);
    let v: String = conn.get("user:late:set").await.unwrap();
    assert_eq!(v, "sidecar");
}

#[tokio::test]
async fn heartbeats_and_metrics() {
    let (a, b) = servers();
    let sidecar = Sidecar::start(&two(&a, &b, 7, no_ttl()), &SECRETS);
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = conn.set("auth:1", "v").await.unwrap();
    let _: Option<String> = conn.get("auth:1").await.unwrap();
    let _: Option<String> = conn.get("auth:missing").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for server in [&a, &b] {
        let mut c = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        loop {
            let beats = redis_fleet::redis::protocol::heartbeat::read(&mut c, "test/test")
                .await
                .unwrap();
            if let Some((id, version)) = beats.iter().next() {
                assert!(id.starts_with("test-sidecar"), "{id}");
                assert_eq!(*version, 7);
                assert_eq!(beats.len(), 1);
                // Bookkeeping expires with the sidecars: three keys (live, versions, features),
                // with a TTL.
                let ttl: i64 = c.pttl("redisfleet:sidecars:test/test").await.unwrap();
                assert!(ttl > 0 && ttl <= 15_000, "{ttl}");
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("redisfleet:sidecar*")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                assert_eq!(keys.len(), 3, "{keys:?}");
                for key in &keys {
                    let ttl: i64 = c.pttl(key).await.unwrap();
                    assert!(ttl > 0 && ttl <= 15_000, "{key}: {ttl}");
                }
                // A sidecar that stopped beating long ago no longer counts.
                let () = redis::pipe()
                    .cmd("ZADD")
                    .arg("redisfleet:sidecars:test/test")
                    .arg(1)
                    .arg("ghost")
                    .ignore()
                    .cmd("HSET")
                    .arg("redisfleet:sidecar-versions:test/test")
                    .arg("ghost")
                    .arg(1)
                    .ignore()
                    .query_async(&mut c)
                    .await
                    .unwrap();
                let beats = redis_fleet::redis::protocol::heartbeat::read(&mut c, "test/test")
                    .await
                    .unwrap();
                assert!(!beats.contains_key("ghost"), "{beats:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no heartbeat on port {}",
                server.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let m = sidecar.metrics();
    for series in [
        "redisfleet_sidecar_commands_total{category=\"auth\"} 3",
        "redisfleet_sidecar_hits_total{category=\"auth\"} 1",
        "redisfleet_sidecar_misses_total{category=\"auth\"} 1",
        "redisfleet_sidecar_routing_version 7",
        "redisfleet_sidecar_backend_latency_seconds_count{redis_instance=\"a\"}",
        "redisfleet_sidecar_client_connections 1",
    ] {
        assert!(m.contains(series), "missing {series}\n{m}");
    }
}

/// Moves the keys sidecars queue on `b`'s urgent list to `a`, as the rebalance Job does every
/// few milliseconds while it copies, until the task is aborted; for a slot group a script
/// waits on (the urgent group list), every `user:` key, then the group counts as moved.
fn serve_urgent_keys(
    b: &RedisServer,
    a: &RedisServer,
    mover: redis_fleet::redis::protocol::mover::Mover,
) -> tokio::task::JoinHandle<()> {
    use redis_fleet::redis::protocol::names;
    let (b, a) = (b.client(), a.client());
    tokio::spawn(async move {
        let mut src = b.get_multiplexed_async_connection().await.unwrap();
        let mut dst = a.get_multiplexed_async_connection().await.unwrap();
        loop {
            let popped: Option<Vec<Vec<u8>>> = redis::cmd("LPOP")
                .arg(names::urgent("test/test"))
                .arg(64)
                .query_async(&mut src)
                .await
                .unwrap();
            let mut keys: Vec<bytes::Bytes> = popped
                .unwrap_or_default()
                .into_iter()
                .map(bytes::Bytes::from)
                .collect();
            let groups: Option<Vec<String>> = redis::cmd("LPOP")
                .arg(names::urgent_groups("test/test"))
                .arg(64)
                .query_async(&mut src)
                .await
                .unwrap();
            let groups = groups.unwrap_or_default();
            if !groups.is_empty() {
                let all: Vec<String> = redis::cmd("KEYS")
                    .arg("user:*")
                    .query_async(&mut src)
                    .await
                    .unwrap();
                keys.extend(all.into_iter().map(bytes::Bytes::from));
            }
            if !keys.is_empty() {
                support::redis::move_batch(
                    &mover,
                    &mut src,
                    &mut dst,
                    &keys,
                    "redisfleet:group:test:2:",
                    Duration::ZERO,
                )
                .await;
            }
            for g in &groups {
                let _: () = redis::cmd("SET")
                    .arg(g)
                    .arg(names::GROUP_MOVED)
                    .query_async(&mut src)
                    .await
                    .unwrap();
            }
            if keys.is_empty() && groups.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
}

/// A draining instance emptied into a range its target already serves (a legacy Redis): the
/// target's copy of a key is the fleet's, written since the fleet served the range, and the
/// draining instance's the legacy one. Reads must see the fleet's copy, a write must not land
/// where the move then drops it, and a delete must not bring the legacy copy back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_into_a_served_range_never_prefers_the_legacy_copy() {
    let ServedDrain {
        a,
        b,
        sidecar,
        mut conn,
        mut on_a,
        mut on_b,
        migration,
        job,
    } = served_drain().await;
    for k in [
        "user:both",
        "user:written",
        "user:deleted",
        "user:both-later",
        "user:deleted-later",
    ] {
        let _: () = on_b.set(k, "legacy").await.unwrap();
        let _: () = on_a.set(k, "fleet").await.unwrap();
    }
    for k in ["user:legacy-only", "user:legacy-later"] {
        let _: () = on_b.set(k, "legacy").await.unwrap();
    }
    // A queue on the legacy Redis: its counter, and a job whose key scripts build from it.
    let _: () = on_b.set("user:{q}:id", 7).await.unwrap();
    let _: () = on_b.hset("user:{q}:7", "data", "legacy job").await.unwrap();

    // Reads of keys on the source ask the target whether it holds a newer copy; writes of
    // such keys wait for their move, which keeps the target's copy.
    let v: String = conn.get("user:both").await.unwrap();
    assert_eq!(v, "fleet", "a read of a key on both sides");
    let v: String = conn.get("user:legacy-only").await.unwrap();
    assert_eq!(v, "legacy", "a key only the draining instance has");
    assert!(sidecar.metric("redisfleet_sidecar_reads_checked_on_target_total") >= 2.0);
    let _: () = conn.set("user:written", "new").await.unwrap();
    let _: () = conn.del("user:deleted").await.unwrap();
    let v: Option<String> = conn.get("user:deleted").await.unwrap();
    assert_eq!(v, None, "a deleted key stays deleted");
    let _: () = conn.append("user:legacy-only", "+1").await.unwrap();
    let v: String = conn.get("user:written").await.unwrap();
    assert_eq!(v, "new");

    // Reads ask the target first now (the guard answered `CHECK` before): a key there is
    // answered there, one that is not goes through the guard.
    let checked = sidecar.metric("redisfleet_sidecar_reads_checked_on_target_total");
    let v: String = conn.get("user:both-later").await.unwrap();
    assert_eq!(v, "fleet");
    let v: String = conn.get("user:legacy-later").await.unwrap();
    assert_eq!(v, "legacy");
    assert_eq!(
        sidecar.metric("redisfleet_sidecar_reads_checked_on_target_total"),
        checked + 2.0
    );
    let _: () = conn.del("user:deleted-later").await.unwrap();
    let v: Option<String> = conn.get("user:deleted-later").await.unwrap();
    assert_eq!(v, None);
    let _: () = conn.set("user:legacy-later", "written").await.unwrap();
    assert!(
        !on_b.exists::<_, bool>("user:legacy-later").await.unwrap(),
        "a write never runs on the source: its key moved first"
    );

    // A script never runs on the source: it may write keys the target holds.
    let _: () = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('SET', ARGV[2], ARGV[1])")
        .arg(1)
        .arg("user:legacy-later")
        .arg("from a script")
        .arg("user:both-later")
        .query_async(&mut conn)
        .await
        .unwrap();

    // A script reads and writes a key it does not declare: its slot group moves whole first
    // (declared keys alone, it ran on the target beside no job and the move then dropped the
    // job's data).
    let data: Option<String> = redis::cmd("EVAL")
        .arg(
            "local job = 'user:{q}:' .. redis.call('GET', KEYS[1]) \
             redis.call('HSET', job, 'processed', '1') \
             return redis.call('HGET', job, 'data')",
        )
        .arg(1)
        .arg("user:{q}:id")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(data.as_deref(), Some("legacy job"));

    job.abort();
    move_all_user_keys(&b, &a, &migration).await;
    let fields: std::collections::HashMap<String, String> =
        conn.hgetall("user:{q}:7").await.unwrap();
    assert_eq!(fields.get("data").map(String::as_str), Some("legacy job"));
    assert_eq!(fields.get("processed").map(String::as_str), Some("1"));
    for (key, want) in [
        ("user:both", Some("fleet")),
        ("user:written", Some("new")),
        ("user:deleted", None),
        ("user:legacy-only", Some("legacy+1")),
        ("user:both-later", Some("from a script")),
        ("user:deleted-later", None),
        ("user:legacy-later", Some("from a script")),
    ] {
        let v: Option<String> = conn.get(key).await.unwrap();
        assert_eq!(v.as_deref(), want, "{key} after the move");
    }
}
