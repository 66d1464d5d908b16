//! Pub/Sub through sidecars on two instances: a publisher on one sidecar reaches subscribers
//! on another (as on two application pods), in RESP2 and RESP3, for channels, patterns and
//! shard channels; through table reloads, a migration of a shard channel's slot, the failover
//! of an instance and its restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use redis_fleet::redis::resp::Value;
use redis_fleet::routing::Resolver;
use redis_fleet::routing::table::{Failover, Migration, RoutingTable, TtlRules};
use support::resp::RawConn;
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{RedisOptions, RedisServer};

fn fleet(a: &RedisServer, b: &RedisServer, version: u64) -> RoutingTable {
    table(
        version,
        vec![("a", endpoint(a, None)), ("b", endpoint(b, None))],
        vec![
            category(
                "events",
                &["events:"],
                TtlRules::default(),
                &[(0, 16383, "a")],
            ),
            category(
                "default",
                &[],
                TtlRules::default(),
                &[(0, 8191, "a"), (8192, 16383, "b")],
            ),
        ],
    )
}

fn bulk(s: &str) -> Value {
    Value::Bulk(s.to_owned().into())
}

fn message(channel: &str, payload: &str) -> Value {
    Value::Array(vec![bulk("message"), bulk(channel), bulk(payload)])
}

/// Channels whose publish target is `a` and `b` respectively, so both instances are used.
fn channels() -> Vec<String> {
    (0..8).map(|i| format!("news:{i}")).collect()
}

/// Waits until `f` holds (the listeners subscribe asynchronously after a table change).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publishes `payload` on `channel` through `publisher` until `subscriber` receives it (the
/// first sends may precede a resubscription), then expects nothing else queued.
fn delivered(
    publisher: &mut RawConn,
    subscriber: &mut RawConn,
    verb: &str,
    channel: &str,
    want: &Value,
) {
    subscriber.set_timeout(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = publisher.call(&[verb, channel, "hello"]);
        assert!(!reply.is_error(), "{verb}: {reply:?}");
        if let Some(got) = subscriber.read() {
            assert_eq!(&got, want);
            break;
        }
        assert!(Instant::now() < deadline, "{verb} {channel} never arrived");
    }
    // Drain duplicates of earlier retries: none may be other than the same message.
    while let Some(extra) = subscriber.read() {
        assert_eq!(&extra, want);
    }
    subscriber.set_timeout(Duration::from_secs(10));
}

#[test]
fn a_publisher_on_one_sidecar_reaches_subscribers_on_another() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let t = fleet(&a, &b, 1);
    let pod1 = Sidecar::start(&t, &[]);
    let pod2 = Sidecar::start(&t, &[]);

    // RESP2 subscriber on pod2: confirmations count channels and patterns.
    let mut sub = RawConn::open(pod2.port);
    let chans = channels();
    let mut args = vec!["SUBSCRIBE".to_owned()];
    args.extend(chans.iter().cloned());
    sub.send(&args);
    for (i, c) in chans.iter().enumerate() {
        assert_eq!(
            sub.read().unwrap(),
            Value::Array(vec![
                bulk("subscribe"),
                bulk(c),
                Value::Integer(i as i64 + 1)
            ])
        );
    }
    // Subscribed mode: only subscription commands and PING.
    let refused = sub.cmd("GET k");
    assert!(
        matches!(&refused, Value::Error(e) if e.starts_with(b"ERR Can't execute 'get'")),
        "{refused:?}"
    );
    assert_eq!(sub.cmd("PING"), Value::Array(vec![bulk("pong"), bulk("")]));

    // Each message once, whichever instance it was published on.
    let mut publisher = RawConn::open(pod1.port);
    for c in &chans {
        let n = publisher.call(&["PUBLISH", c, "hi"]);
        assert_eq!(n, Value::Integer(1), "one subscribing sidecar");
        assert_eq!(sub.read().unwrap(), message(c, "hi"));
    }
    // Published on an instance directly, inside MULTI, or by a script: delivered too.
    let mut direct = RawConn::open(b.port);
    direct.call(&["PUBLISH", "news:0", "direct"]);
    assert_eq!(sub.read().unwrap(), message("news:0", "direct"));
    assert_eq!(publisher.cmd("MULTI"), Value::Simple("OK".into()));
    publisher.call(&["SET", "user:1", "x"]);
    publisher.call(&["PUBLISH", "news:1", "in-multi"]);
    assert!(matches!(publisher.cmd("EXEC"), Value::Array(_)));
    assert_eq!(sub.read().unwrap(), message("news:1", "in-multi"));
    publisher.call(&[
        "EVAL",
        "redis.call('SET', KEYS[1], 'v'); return redis.call('PUBLISH', ARGV[1], ARGV[2])",
        "1",
        "user:2",
        "news:2",
        "scripted",
    ]);
    assert_eq!(sub.read().unwrap(), message("news:2", "scripted"));

    // Patterns, in RESP3 on pod1: push frames, and ordinary commands in between.
    let mut sub3 = RawConn::open(pod1.port);
    sub3.call(&["HELLO", "3"]);
    sub3.send(&["PSUBSCRIBE", "news:*"]);
    assert_eq!(
        sub3.read().unwrap(),
        Value::Push(vec![bulk("psubscribe"), bulk("news:*"), Value::Integer(1)])
    );
    assert_eq!(
        sub3.call(&["SET", "user:3", "v"]),
        Value::Simple("OK".into())
    );
    let mut publisher2 = RawConn::open(pod2.port);
    publisher2.call(&["PUBLISH", "news:7", "both"]);
    assert_eq!(sub.read().unwrap(), message("news:7", "both"));
    assert_eq!(
        sub3.read().unwrap(),
        Value::Push(vec![
            bulk("pmessage"),
            bulk("news:*"),
            bulk("news:7"),
            bulk("both")
        ])
    );
    // PUBSUB across the fleet.
    let Value::Array(names) = publisher.call(&["PUBSUB", "CHANNELS", "news:*"]) else {
        panic!()
    };
    assert_eq!(names.len(), chans.len());
    assert_eq!(
        publisher.call(&["PUBSUB", "NUMSUB", "news:0", "nobody"]),
        Value::Array(vec![
            bulk("news:0"),
            Value::Integer(1),
            bulk("nobody"),
            Value::Integer(0)
        ])
    );
    assert_eq!(publisher.call(&["PUBSUB", "NUMPAT"]), Value::Integer(1));

    // Unsubscribing: counts go down, then the connection is an ordinary one again.
    sub.send(&["UNSUBSCRIBE"]);
    for i in (0..chans.len()).rev() {
        let Value::Array(reply) = sub.read().unwrap() else {
            panic!()
        };
        assert_eq!(reply[0], bulk("unsubscribe"));
        assert_eq!(reply[2], Value::Integer(i as i64));
    }
    assert_eq!(sub.cmd("PING"), Value::Simple("PONG".into()));
    // RESET drops the RESP3 client's patterns too.
    assert_eq!(sub3.cmd("RESET"), Value::Simple("RESET".into()));
    eventually("no pattern left", || {
        publisher.call(&["PUBSUB", "NUMPAT"]) == Value::Integer(0)
    });
    assert_eq!(
        publisher.call(&["PUBLISH", "news:0", "nobody-listens"]),
        Value::Integer(0)
    );
}

#[test]
fn shard_channels_follow_their_slot_through_a_migration_and_a_failover() {
    let (mut a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let t1 = fleet(&a, &b, 1);
    let pod1 = Sidecar::start(&t1, &[]);
    let pod2 = Sidecar::start(&t1, &[]);
    let resolver = Resolver::new(t1.clone()).unwrap();
    // `events:` lives on a.
    assert_eq!(
        resolver.instance_name(resolver.resolve(b"events:orders").target),
        "a"
    );

    let mut sub = RawConn::open(pod2.port);
    sub.send(&["SSUBSCRIBE", "events:orders"]);
    assert_eq!(
        sub.read().unwrap(),
        Value::Array(vec![
            bulk("ssubscribe"),
            bulk("events:orders"),
            Value::Integer(1)
        ])
    );
    let mut publisher = RawConn::open(pod1.port);
    let smessage = Value::Array(vec![bulk("smessage"), bulk("events:orders"), bulk("hello")]);
    assert_eq!(
        publisher.call(&["SPUBLISH", "events:orders", "hello"]),
        Value::Integer(1)
    );
    assert_eq!(sub.read().unwrap(), smessage);
    // On a, where its slot is: SPUBLISH on b reaches no one.
    let mut on_b = RawConn::open(b.port);
    assert_eq!(
        on_b.call(&["SPUBLISH", "events:orders", "x"]),
        Value::Integer(0)
    );

    // The slot migrates a → b: the subscriber's sidecar listens on both, and a publisher
    // still on the old table (pod1) is heard as well as one on the new table.
    let mut t2 = t1.clone();
    t2.version = 2;
    t2.migrating.push(Migration {
        category: "events".into(),
        start: 0,
        end: 16383,
        from: "a".into(),
        to: "b".into(),
        epoch: 2,
        target_serves: None,
    });
    pod2.update_table(&t2);
    eventually("pod2 on v2", || {
        pod2.metrics()
            .contains("redisfleet_sidecar_routing_version 2")
    });
    delivered(
        &mut publisher,
        &mut sub,
        "SPUBLISH",
        "events:orders",
        &smessage,
    );
    // Finalized on b: pod1 (new table) publishes on b, pod2 keeps a for a while.
    let mut t3 = t1.clone();
    t3.version = 3;
    t3.categories[0].slots = vec![(0u16, 16383u16, "b".to_owned()).into()];
    pod1.update_table(&t3);
    pod2.update_table(&t3);
    eventually("both on v3", || {
        pod1.metrics()
            .contains("redisfleet_sidecar_routing_version 3")
            && pod2
                .metrics()
                .contains("redisfleet_sidecar_routing_version 3")
    });
    delivered(
        &mut publisher,
        &mut sub,
        "SPUBLISH",
        "events:orders",
        &smessage,
    );
    assert_eq!(
        on_b.call(&["PUBSUB", "SHARDNUMSUB", "events:orders"]),
        Value::Array(vec![bulk("events:orders"), Value::Integer(1)])
    );

    // Classic channels survive the failover of an instance: a dies, publishes go to b.
    let mut csub = RawConn::open(pod2.port);
    csub.send(&["SUBSCRIBE", "alerts"]);
    csub.read().unwrap();
    let alert = message("alerts", "hello");
    delivered(&mut publisher, &mut csub, "PUBLISH", "alerts", &alert);
    a.kill();
    let mut t4 = t3.clone();
    t4.version = 4;
    t4.failover.push(Failover {
        category: "default".into(),
        start: 0,
        end: 8191,
        from: "a".into(),
        to: "b".into(),
        handover: false,
    });
    pod1.update_table(&t4);
    pod2.update_table(&t4);
    delivered(&mut publisher, &mut csub, "PUBLISH", "alerts", &alert);
    // a comes back (empty): the listeners reconnect and subscribe again.
    a.restart();
    let mut on_a = RawConn::open(a.port);
    eventually("pod2 subscribed on a again", || {
        on_a.call(&["PUBSUB", "NUMSUB", "alerts"])
            == Value::Array(vec![bulk("alerts"), Value::Integer(1)])
    });
    on_a.call(&["PUBLISH", "alerts", "from-a"]);
    assert_eq!(csub.read().unwrap(), message("alerts", "from-a"));
}

#[test]
fn a_client_that_never_reads_is_dropped_not_buffered_forever() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let pod = Sidecar::start(&fleet(&a, &b, 1), &[]);
    let mut lazy = RawConn::open(pod.port);
    lazy.send(&["SUBSCRIBE", "firehose"]);
    lazy.read().unwrap();
    let mut publisher = RawConn::open(a.port);
    let payload = "x".repeat(4096);
    // Far more than the sidecar queues for one client; the sidecar stays up and serving.
    for _ in 0..80 {
        let mut pipeline = Vec::new();
        for _ in 0..1000 {
            pipeline.push(vec![
                "PUBLISH".to_owned(),
                "firehose".to_owned(),
                payload.clone(),
            ]);
        }
        for p in &pipeline {
            publisher.send(p);
        }
        for _ in &pipeline {
            publisher.read().unwrap();
        }
    }
    let mut other = RawConn::open(pod.port);
    assert_eq!(other.cmd("PING"), Value::Simple("PONG".into()));
    eventually("the lazy subscriber is gone", || {
        publisher.call(&["PUBSUB", "NUMSUB", "firehose"])
            == Value::Array(vec![bulk("firehose"), Value::Integer(0)])
    });
}
