//! The fleet's keyspace as one database through the sidecar: SCAN with a cursor that stays
//! valid across instances and a table change (no key that existed throughout is missed, no
//! stale copy is returned), KEYS, DBSIZE and RANDOMKEY without the fleet's bookkeeping keys,
//! FLUSHDB/FLUSHALL only when allowed, one database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis_fleet::redis::resp::Value;
use redis_fleet::routing::Resolver;
use redis_fleet::routing::table::{Migration, RoutingTable, TtlRules};
use redis_fleet::sidecar::keyspace::{instance_hash, walk_order};
use support::resp::RawConn;
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{RedisOptions, RedisServer};

fn fleet(a: &RedisServer, b: &RedisServer, version: u64) -> RoutingTable {
    table(
        version,
        vec![("a", endpoint(a, None)), ("b", endpoint(b, None))],
        vec![
            category("user", &["user:"], TtlRules::default(), &[(0, 16383, "a")]),
            category("menu", &["menu:"], TtlRules::default(), &[(0, 16383, "b")]),
            category(
                "default",
                &[],
                TtlRules::default(),
                &[(0, 8191, "a"), (8192, 16383, "b")],
            ),
        ],
    )
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(v.as_bytes().expect("a string")).into_owned()
}

/// One SCAN step: the next cursor and the keys.
fn scan_step(conn: &mut RawConn, cursor: &str, count: usize) -> (String, Vec<String>) {
    let Value::Array(parts) = conn.call(&["SCAN", cursor, "COUNT", &count.to_string()]) else {
        panic!("SCAN reply")
    };
    let Value::Array(keys) = &parts[1] else {
        panic!()
    };
    (text(&parts[0]), keys.iter().map(text).collect())
}

fn scan_all(conn: &mut RawConn) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys) = scan_step(conn, &cursor, 50);
        seen.extend(keys);
        if next == "0" {
            return seen;
        }
        cursor = next;
    }
}

fn wait_version(sidecar: &Sidecar, v: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sidecar
        .metrics()
        .contains(&format!("redisfleet_sidecar_routing_version {v}"))
    {
        assert!(Instant::now() < deadline, "sidecar never loaded v{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_keyspace_reads_as_one_database_without_bookkeeping_or_stale_copies() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let sidecar = Sidecar::start(&fleet(&a, &b, 1), &[]);
    let mut conn = RawConn::open(sidecar.port);
    let mut expected = BTreeSet::new();
    for i in 0..300 {
        for prefix in ["user:", "menu:", "misc:"] {
            let key = format!("{prefix}{i}");
            conn.call(&["SET", &key, "v"]);
            expected.insert(key);
        }
    }
    // A stale copy (a user: key on b, where user: does not live) and bookkeeping keys.
    let mut on_b = RawConn::open(b.port);
    on_b.call(&["SET", "user:stale", "old"]);
    on_b.call(&["SET", "redisfleet:checkpoint:x", "1"]);
    let mut on_a = RawConn::open(a.port);
    // A key in transit, under its tombstone on its source: it exists.
    on_a.call(&["SET", "redisfleet:tomb:user:moving", "v"]);
    expected.insert("user:moving".to_owned());

    // The heartbeats (bookkeeping) are there by now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_a.call(&["KEYS", "redisfleet:sidecars*"]) == Value::Array(vec![]) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut without_transit = expected.clone();
    without_transit.remove("user:moving");
    assert_eq!(scan_all(&mut conn), without_transit);
    let Value::Array(keys) = conn.call(&["KEYS", "*"]) else {
        panic!()
    };
    let keys: BTreeSet<String> = keys.iter().map(text).collect();
    assert_eq!(
        keys, expected,
        "KEYS reports the key in transit by its name"
    );
    let Value::Array(users) = conn.call(&["KEYS", "user:1*"]) else {
        panic!()
    };
    assert_eq!(users.len(), 111);
    // DBSIZE: the application's keys (and the one in transit), the stale copy aside.
    assert_eq!(
        conn.call(&["DBSIZE"]),
        Value::Integer(expected.len() as i64 + 1)
    );
    for _ in 0..50 {
        let key = text(&conn.call(&["RANDOMKEY"]));
        assert!(expected.contains(&key), "RANDOMKEY gave {key}");
    }
    // One database.
    assert_eq!(conn.call(&["SELECT", "0"]), Value::Simple("OK".into()));
    for refused in [
        vec!["SELECT", "1"],
        vec!["MOVE", "user:1", "1"],
        vec!["SWAPDB", "0", "1"],
        vec!["FLUSHALL"],
        vec!["FLUSHDB", "ASYNC"],
    ] {
        let reply = conn.call(&refused);
        assert!(reply.is_error(), "{refused:?}: {reply:?}");
        let Value::Error(e) = reply else { panic!() };
        let e = String::from_utf8_lossy(&e).into_owned();
        assert!(
            e.contains("database") || e.contains("--allow-flush"),
            "{refused:?}: {e}"
        );
    }
}

#[test]
fn a_scan_survives_a_table_change_that_moves_its_keys_behind_it() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let t1 = fleet(&a, &b, 1);
    let sidecar = Sidecar::start(&t1, &[]);
    let resolver = Resolver::new(t1.clone()).unwrap();
    let order: Vec<String> = walk_order(&resolver)
        .iter()
        .map(|(_, i)| resolver.instance_name(*i).to_owned())
        .collect();
    // The scan walks `first` then `second`; the keys will move from `second` to `first`,
    // behind the walk: without its second pass over the slots `first` was given, the scan
    // would miss every one of them.
    let (first, second) = (order[0].clone(), order[1].clone());
    let (moving, servers) = if second == "a" {
        ("user", (&a, &b))
    } else {
        ("menu", (&b, &a))
    };
    let (source, target) = servers;
    let mut conn = RawConn::open(sidecar.port);
    let mut expected = BTreeSet::new();
    for i in 0..400 {
        for prefix in ["user:", "menu:"] {
            let key = format!("{prefix}{i}");
            conn.call(&["SET", &key, "v"]);
            expected.insert(key);
        }
    }
    // Scan all of `first`: the cursor (bits 40–55: the instance's hash) moves on to `second`.
    let second_hash = u64::from(instance_hash(&second));
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys) = scan_step(&mut conn, &cursor, 20);
        seen.extend(keys);
        assert_ne!(next, "0");
        cursor = next;
        if (cursor.parse::<u64>().unwrap() >> 40) & 0xffff == second_hash {
            break;
        }
    }

    // The operator migrates `moving` from `second` to `first`, and the keys move (as the
    // rebalance Job moves them: DUMP, RESTORE with TTL, DEL).
    let mut t2 = t1.clone();
    t2.version = 2;
    t2.migrating.push(Migration {
        category: moving.into(),
        start: 0,
        end: 16383,
        from: second.clone(),
        to: first.clone(),
        epoch: 2,
        target_serves: None,
    });
    sidecar.update_table(&t2);
    wait_version(&sidecar, 2);
    let mut src = RawConn::open(source.port);
    let mut dst = RawConn::open(target.port);
    for key in expected
        .iter()
        .filter(|k| k.starts_with(&format!("{moving}:")))
    {
        let Value::Bulk(dump) = src.call(&["DUMP", key]) else {
            panic!()
        };
        let mut args: Vec<Vec<u8>> =
            vec![b"RESTORE".to_vec(), key.as_bytes().to_vec(), b"0".to_vec()];
        args.push(dump.to_vec());
        assert_eq!(dst.call(&args), Value::Simple("OK".into()));
        src.call(&["DEL", key]);
    }
    // Finalized: `first` owns the category now.
    let mut t3 = t2.clone();
    t3.version = 3;
    t3.migrating.clear();
    let c = t3.categories.iter_mut().find(|c| c.name == moving).unwrap();
    c.slots = vec![(0u16, 16383u16, first.clone()).into()];
    sidecar.update_table(&t3);
    wait_version(&sidecar, 3);
    std::thread::sleep(Duration::from_millis(300));

    loop {
        let (next, keys) = scan_step(&mut conn, &cursor, 20);
        seen.extend(keys);
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let missed: Vec<&String> = expected.difference(&seen).collect();
    assert!(
        missed.is_empty(),
        "{} keys missed: {missed:?}",
        missed.len()
    );
    assert!(seen.iter().all(|k| expected.contains(k)));
}

#[test]
fn flush_needs_the_explicit_flag_and_keeps_the_fleets_bookkeeping() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let sidecar = Sidecar::start_with(&fleet(&a, &b, 1), &[], &["--allow-flush"]);
    let mut conn = RawConn::open(sidecar.port);
    for i in 0..100 {
        conn.call(&["SET", &format!("k{i}"), "v"]);
    }
    let mut on_a = RawConn::open(a.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_a.call(&["KEYS", "redisfleet:sidecars*"]) == Value::Array(vec![]) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(conn.call(&["FLUSHALL"]), Value::Simple("OK".into()));
    assert_eq!(conn.call(&["DBSIZE"]), Value::Integer(0));
    assert_ne!(
        on_a.call(&["KEYS", "redisfleet:sidecars*"]),
        Value::Array(vec![]),
        "heartbeats survive"
    );
    conn.call(&["SET", "k", "v"]);
    assert_eq!(conn.call(&["FLUSHDB", "SYNC"]), Value::Simple("OK".into()));
    assert_eq!(conn.call(&["DBSIZE"]), Value::Integer(0));
}
