//! What one sidecar must get right for the data protocol (`docs/protocol.md`), with real
//! redis-servers and real clients, each test trying to break one rule: per-client connection
//! state never leaks into shared connections, transactions are routed by the table in use at
//! EXEC, a blocked pop is never served to a client that hung up (a half-close included) while
//! every other request read before it is answered, a wait follows its list when
//! it moves, the category TTLs work on Redis 6.2, oversized requests cost nothing up front,
//! application scripts cannot reach around the sidecar, and older tables are fenced off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::AsyncCommands;
use redis_fleet::redis::protocol::mover::{Mover, Restore, Taken};
use redis_fleet::redis::protocol::{fence, names};
use redis_fleet::routing::table::{Migration, RoutingTable, TtlRules};
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{RedisOptions, RedisServer};

const SECRETS: [(&str, &str, &str); 0] = [];

fn server() -> RedisServer {
    RedisServer::start(RedisOptions::default())
}

/// `user:` on b, `auth:` on a, the rest on a.
fn two(a: &RedisServer, b: &RedisServer, version: u64, ttl: TtlRules) -> RoutingTable {
    table(
        version,
        vec![("a", endpoint(a, None)), ("b", endpoint(b, None))],
        vec![
            category("auth", &["auth:"], ttl, &[(0, 16383, "a")]),
            category("user", &["user:"], ttl, &[(0, 16383, "b")]),
            category("default", &[], TtlRules::default(), &[(0, 16383, "a")]),
        ],
    )
}

/// Sends raw RESP and reads until `expect` replies arrived or a second passed.
fn raw(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                if !out.is_empty() {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn connection_commands_inside_multi_never_reach_a_shared_connection() {
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 1, TtlRules::default()), &SECRETS);
    let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    // The reproduction of the issue: SELECT inside MULTI switched the shared connection to
    // database 1 for every client of the sidecar.
    let reply = raw(
        &mut s,
        "*1\r\n$5\r\nMULTI\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n*3\r\n$3\r\nSET\r\n$6\r\nauth:x\r\n$1\r\ny\r\n*1\r\n$4\r\nEXEC\r\n",
    );
    assert!(
        reply.starts_with("+OK\r\n-ERR SELECT inside MULTI"),
        "{reply}"
    );
    assert!(
        reply.ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n"),
        "{reply}"
    );
    for cmd in [
        "*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n",
        "*2\r\n$4\r\nAUTH\r\n$1\r\nx\r\n",
        "*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n",
        "*1\r\n$6\r\nDBSIZE\r\n",
    ] {
        let reply = raw(
            &mut s,
            &format!("*1\r\n$5\r\nMULTI\r\n{cmd}*1\r\n$4\r\nEXEC\r\n"),
        );
        assert!(
            reply.contains("inside MULTI is not supported"),
            "{cmd:?}: {reply}"
        );
        assert!(reply.contains("EXECABORT"), "{reply}");
    }
    // Another client's writes land in database 0, on the instance the table says.
    let mut other = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = other.set("auth:after", "1").await.unwrap();
    let mut direct = a.client().get_multiplexed_async_connection().await.unwrap();
    let here: Option<String> = direct.get("auth:after").await.unwrap();
    assert_eq!(here.as_deref(), Some("1"));
    let _: () = redis::cmd("SELECT")
        .arg(1)
        .query_async(&mut direct)
        .await
        .unwrap();
    let in_db1: i64 = redis::cmd("DBSIZE").query_async(&mut direct).await.unwrap();
    assert_eq!(in_db1, 0, "nothing may reach database 1");
    // QUIT inside MULTI ends the connection at once, as in Redis.
    let reply = raw(&mut s, "*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nQUIT\r\n");
    assert_eq!(reply, "+OK\r\n+OK\r\n");
}

#[tokio::test]
async fn a_transaction_runs_where_the_table_in_use_at_exec_says() {
    let (a, b, c) = (server(), server(), server());
    let v1 = two(&a, &b, 1, TtlRules::default());
    let sidecar = Sidecar::start(&v1, &SECRETS);
    let mut conn = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Queued by v1, where the user category lives on b (instance 1 of [a, b])...
    let _: () = redis::cmd("MULTI").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("user:k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    // ... executed by v2, which adds an instance whose name sorts first ([aaa, a, b]): the
    // queued instance index 1 would now be a.
    let mut v2 = table(
        2,
        vec![
            ("aaa", endpoint(&c, None)),
            ("a", endpoint(&a, None)),
            ("b", endpoint(&b, None)),
        ],
        v1.categories.clone(),
    );
    v2.categories[2] = category("default", &[], TtlRules::default(), &[(0, 16383, "aaa")]);
    sidecar.update_table(&v2);
    sidecar.wait_for_version(2).await;
    let exec: Vec<String> = redis::cmd("EXEC").query_async(&mut conn).await.unwrap();
    assert_eq!(exec, vec!["OK"]);
    for (server, there) in [(&a, false), (&b, true), (&c, false)] {
        let mut d = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let exists: bool = d.exists("user:k").await.unwrap();
        assert_eq!(exists, there, "user:k on port {}", server.port);
    }
    // A table without the instance the transaction was queued for: no panic, a clear answer.
    let _: () = redis::cmd("MULTI").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("auth:k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let v3 = table(
        3,
        vec![("b", endpoint(&b, None)), ("aaa", endpoint(&c, None))],
        vec![
            category("auth", &["auth:"], TtlRules::default(), &[(0, 16383, "b")]),
            category("user", &["user:"], TtlRules::default(), &[(0, 16383, "b")]),
            category("default", &[], TtlRules::default(), &[(0, 16383, "aaa")]),
        ],
    );
    sidecar.update_table(&v3);
    sidecar.wait_for_version(3).await;
    let exec: Vec<String> = redis::cmd("EXEC").query_async(&mut conn).await.unwrap();
    assert_eq!(exec, vec!["OK"]);
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    let v: Option<String> = on_b.get("auth:k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    let mut sc = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut sc).await.unwrap();
    assert_eq!(pong, "PONG", "the sidecar survived");
}

/// Pushes an element onto `user:q`, where a client that went away waited, and checks that it
/// stays there; the connection is returned.
async fn pushed_and_not_popped(sidecar: &Sidecar) -> redis::aio::MultiplexedConnection {
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = c.lpush("user:q", "job-1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let len: i64 = c.llen("user:q").await.unwrap();
    assert_eq!(len, 1, "the element was popped for a client that hung up");
    c
}

#[tokio::test]
async fn a_client_that_hangs_up_while_blocked_pops_nothing() {
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 1, TtlRules::default()), &SECRETS);
    {
        let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
        s.write_all(b"*3\r\n$5\r\nBLPOP\r\n$6\r\nuser:q\r\n$1\r\n0\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // The client goes away without waiting for its element.
    }
    std::thread::sleep(Duration::from_millis(300));
    pushed_and_not_popped(&sidecar).await;
}

#[tokio::test]
async fn a_client_that_half_closes_gets_every_reply_but_no_blocked_pop() {
    // `printf '…' | nc -N sidecar 6379`: the client sends its requests, shuts its side down
    // and reads the replies. Redis answers what it read before the end of the stream; the
    // sidecar dropped the replies still on their way from the instances.
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 1, TtlRules::default()), &SECRETS);
    let n = 2_000;
    let mut request = String::new();
    for i in 0..n {
        let key = format!("{}:{i}", if i % 2 == 0 { "user" } else { "auth" });
        request.push_str(&format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n",
            key.len()
        ));
    }
    let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut replies = String::new();
    s.read_to_string(&mut replies).unwrap();
    assert_eq!(
        replies.matches("+OK\r\n").count(),
        n,
        "every request read before the end of the stream is answered"
    );

    // A blocked pop of a client that half-closed ends, as Redis ends it: nothing is popped
    // for it.
    let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    s.write_all(b"*3\r\n$5\r\nBLPOP\r\n$6\r\nuser:q\r\n$1\r\n0\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = pushed_and_not_popped(&sidecar).await;
    // The end of the stream right behind a write and a pop of a list that holds an element:
    // Redis pops it at once and the client, which still reads, gets it. Whatever the sidecar
    // does, the element is never lost: the client got it, or it is still in the list.
    let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    s.write_all(
        b"*3\r\n$3\r\nSET\r\n$6\r\nuser:w\r\n$1\r\nv\r\n*3\r\n$5\r\nBLPOP\r\n$6\r\nuser:q\r\n$1\r\n0\r\n",
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut replies = String::new();
    s.read_to_string(&mut replies).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let len: i64 = c.llen("user:q").await.unwrap();
    let got = replies == "+OK\r\n*2\r\n$6\r\nuser:q\r\n$5\r\njob-1\r\n";
    assert!(
        (replies == "+OK\r\n" && len == 1) || (got && len == 0),
        "replies {replies:?}, {len} left in the list"
    );
}

#[tokio::test]
async fn nothing_sent_after_quit_runs_on_a_resp3_connection() {
    // Review: the reply that closes the connection was wrapped for RESP3 clients, so the
    // serve loop did not see it close, and the requests pipelined after QUIT (or after a
    // blocking command of a client that half-closed) still ran, their replies thrown away.
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 1, TtlRules::default()), &SECRETS);
    let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    s.write_all(
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*1\r\n$4\r\nQUIT\r\n*3\r\n$3\r\nSET\r\n$7\r\nuser:aq\r\n$1\r\nv\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut replies = String::new();
    s.read_to_string(&mut replies).unwrap();
    assert!(replies.ends_with("+OK\r\n"), "{replies:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    let there: bool = on_b.exists("user:aq").await.unwrap();
    assert!(!there, "a SET sent after QUIT ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_pop_follows_its_list_when_the_range_moves() {
    let (a, b) = (server(), server());
    let base = two(&a, &b, 1, TtlRules::default());
    let sidecar = Sidecar::start(&base, &SECRETS);
    let client = sidecar.client();
    let waiter = tokio::spawn(async move {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("user:jobs")
            .arg(20)
            .query_async(&mut c)
            .await
            .unwrap();
        got
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // user: migrates b → a and the range imports: a push to the (absent) list lands on a.
    let mut flipped = base.clone();
    flipped.version = 2;
    let m = Migration {
        category: "user".into(),
        start: 0,
        end: 16383,
        from: "b".into(),
        to: "a".into(),
        epoch: 2,
        target_serves: None,
    };
    flipped.migrating.push(m.clone());
    sidecar.update_table(&flipped);
    sidecar.wait_for_version(2).await;
    let mover = Mover {
        policy: "test/test".into(),
        token: names::mover_token(2, 1),
    };
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    mover.claim(&mut on_b).await.unwrap();
    mover
        .set_marker(&mut on_b, &names::importing("test/test", &m), true, false)
        .await
        .unwrap();
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = c.rpush("user:jobs", "job-7").await.unwrap();
    let mut on_a = a.client().get_multiplexed_async_connection().await.unwrap();
    let landed: i64 = on_a.llen("user:jobs").await.unwrap_or(0);
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the blocked client never got the element")
        .unwrap();
    assert_eq!(got, Some(("user:jobs".to_owned(), "job-7".to_owned())));
    assert!(landed <= 1);
}

#[tokio::test]
async fn category_ttls_work_on_redis_6_2() {
    let old = || {
        RedisServer::start(RedisOptions {
            binary: Some(support::redis::redis_6_2()),
            ..RedisOptions::default()
        })
    };
    let (a, b) = (old(), old());
    let ttl = TtlRules {
        default_ms: Some(600_000),
        max_ms: Some(3_600_000),
        adaptive: false,
    };
    let sidecar = Sidecar::start(&two(&a, &b, 1, ttl), &SECRETS);
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = c.hset("user:h", "f", "v").await.unwrap();
    let _: i64 = c.lpush("user:l", "x").await.unwrap();
    let _: i64 = c.incr("auth:n", 1).await.unwrap();
    let _: () = redis::cmd("MSET")
        .arg("user:m1")
        .arg("1")
        .arg("auth:m2")
        .arg("2")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("MULTI").query_async(&mut c).await.unwrap();
    let _: () = redis::cmd("SADD")
        .arg("user:s")
        .arg("m")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: Vec<i64> = redis::cmd("EXEC").query_async(&mut c).await.unwrap();
    for (server, key) in [
        (&b, "user:h"),
        (&b, "user:l"),
        (&a, "auth:n"),
        (&b, "user:m1"),
        (&a, "auth:m2"),
        (&b, "user:s"),
    ] {
        let mut d = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let t: i64 = d.pttl(key).await.unwrap();
        assert!(
            t > 590_000 && t <= 600_000,
            "{key}: the category's default TTL on Redis 6.2, got {t}"
        );
    }
    // An existing TTL is left alone, as NX says.
    let _: () = redis::cmd("SET")
        .arg("user:keep")
        .arg("v")
        .arg("PX")
        .arg(5_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = c.hset("user:keep2", "f", "v").await.unwrap();
    let _: i64 = c.pexpire("user:keep2", 5_000).await.unwrap();
    let _: i64 = c.hset("user:keep2", "g", "w").await.unwrap();
    let mut d = b.client().get_multiplexed_async_connection().await.unwrap();
    let t: i64 = d.pttl("user:keep2").await.unwrap();
    assert!(t > 0 && t <= 5_000, "{t}");
}

fn vm_size_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn an_announced_half_gigabyte_costs_nothing_until_it_arrives() {
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 1, TtlRules::default()), &SECRETS);
    let pid = sidecar.pid().unwrap();
    let before = vm_size_kb(pid);
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
        s.write_all(b"*2\r\n$3\r\nGET\r\n$536870912\r\nabc")
            .unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_size_kb(pid);
    // Twenty announced 512 MiB arguments: the sidecar must not set aside 10 GiB for them.
    assert!(
        after < before + 100 * 1024,
        "virtual memory grew from {before} kB to {after} kB"
    );
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn scripts_cannot_reach_around_the_sidecar() {
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 1, TtlRules::default()), &SECRETS);
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = c.set("auth:keep", "1").await.unwrap();
    for body in [
        "return redis.call('FLUSHALL')",
        "return redis.call('FLUSHDB')",
        "return redis.call('SWAPDB', 0, 1)",
        "return redis.call('GET', 'redisfleet:fences:test/test')",
        "return redis.pcall('DEL', 'redisfleet:sidecars:test/test')",
        "local k = 'redisfleet:' .. 'mover:test/test' return redis.call('SET', k, 1)",
    ] {
        let r: redis::RedisResult<redis::Value> = redis::cmd("EVAL")
            .arg(body)
            .arg(0)
            .query_async(&mut c)
            .await;
        match r {
            Err(e) => assert!(e.to_string().contains("redis-fleet"), "{body}: {e}"),
            Ok(redis::Value::ServerError(e)) => {
                assert!(format!("{e:?}").contains("redis-fleet"), "{body}: {e:?}")
            }
            Ok(v) => panic!("{body} ran: {v:?}"),
        }
    }
    let mut direct = a.client().get_multiplexed_async_connection().await.unwrap();
    let kept: Option<String> = direct.get("auth:keep").await.unwrap();
    assert_eq!(kept.as_deref(), Some("1"), "nothing was flushed");
    // Ordinary scripts work, by body and by the client's own SHA1.
    let script = redis::Script::new("return redis.call('INCR', KEYS[1])");
    let n: i64 = script.key("auth:n").invoke_async(&mut c).await.unwrap();
    let n2: i64 = script.key("auth:n").invoke_async(&mut c).await.unwrap();
    assert_eq!((n, n2), (1, 2));
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 42")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(sha, redis::Script::new("return 42").get_hash());
    let v: i64 = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 42);
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0000000000000000000000000000000000000000")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, vec![1, 0]);
    let unknown: redis::RedisResult<i64> = redis::cmd("EVALSHA")
        .arg("0000000000000000000000000000000000000000")
        .arg(0)
        .query_async(&mut c)
        .await;
    assert_eq!(unknown.unwrap_err().code(), Some("NOSCRIPT"));
}

#[tokio::test]
async fn a_fence_turns_a_sidecar_on_an_older_table_away() {
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 4, TtlRules::default()), &SECRETS);
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = c.set("user:k", "before").await.unwrap();
    // A Job fences b at v5: the sidecar, still on v4, must not write there any more.
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    fence::raise(&mut on_b, "test/test", &[("b".to_owned(), 5)])
        .await
        .unwrap();
    let closed = fence::close_older_connections(&mut on_b, "test/test", 5)
        .await
        .unwrap();
    assert!(closed >= 1, "the sidecar's connections to b are closed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r: redis::RedisResult<()> = c.set("user:k", "after").await;
        match r {
            Err(e) if matches!(e.code(), Some("TRYAGAIN") | Some("UNAVAILABLE")) => {
                if e.to_string().contains("behind the fleet") {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
            Ok(()) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the fenced sidecar kept writing to b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: Option<String> = on_b.get("user:k").await.unwrap();
    let fenced_value = v.clone();
    // Keys elsewhere still work.
    let _: () = c.set("auth:k", "fine").await.unwrap();
    // With the newer table it writes again.
    sidecar.update_table(&two(&a, &b, 5, TtlRules::default()));
    sidecar.wait_for_version(5).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if c.set::<_, _, ()>("user:k", "v5").await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a sidecar with the new table stayed fenced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: Option<String> = on_b.get("user:k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v5"));
    assert!(matches!(
        fenced_value.as_deref(),
        Some("before") | Some("after")
    ));
}

#[tokio::test]
async fn the_job_holds_at_most_its_budget_of_big_values_at_once() {
    let (source, target) = (server(), server());
    let mut s = source
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut t = target
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mover = Mover {
        policy: "test/test".into(),
        token: names::mover_token(3, 1),
    };
    mover.claim(&mut s).await.unwrap();
    mover.claim(&mut t).await.unwrap();
    let big = vec![b'x'; 128 * 1024];
    let mut keys = Vec::new();
    for i in 0..64 {
        let k = format!("user:{i}");
        let _: () = s.set(&k, &big).await.unwrap();
        keys.push(Bytes::from(k));
    }
    let huge = vec![b'y'; 9 << 20];
    let _: () = s.set("user:huge", &huge).await.unwrap();
    keys.push(Bytes::from_static(b"user:huge"));
    let taken = mover
        .take(&mut s, &keys, "redisfleet:group:test:1:", 8 << 20, 2 << 20)
        .await
        .unwrap();
    let dumped: usize = taken
        .iter()
        .map(|t| match t {
            Taken::Value { dump, .. } => dump.len(),
            _ => 0,
        })
        .sum();
    let later = taken.iter().filter(|t| **t == Taken::Later).count();
    assert!(
        dumped <= (2 << 20) + 200 * 1024,
        "{dumped} bytes in one call"
    );
    assert!(later > 40, "{later} keys left for later");
    assert!(
        matches!(taken.last(), Some(Taken::Big { .. }) | Some(Taken::Later)),
        "a 9 MiB value is never dumped at once: {:?}",
        taken.last().map(std::mem::discriminant)
    );
    // What was taken restores, byte for byte.
    let restores: Vec<Restore> = keys
        .iter()
        .zip(&taken)
        .filter_map(|(k, t)| match t {
            Taken::Value { dump, .. } => Some(Restore {
                key: k.clone(),
                expire_at: 0,
                dump: dump.clone(),
            }),
            _ => None,
        })
        .collect();
    mover.restore(&mut t, &restores).await.unwrap();
    let v: Vec<u8> = t.get("user:0").await.unwrap();
    assert_eq!(v.len(), 128 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_wait_in_a_range_that_migrates_before_it_imports() {
    // Found by BullMQ (its worker waits with BZPOPMIN, its events with XREAD BLOCK): in a
    // migrating range every command goes through the guard, a script, and Redis refuses
    // blocking commands inside scripts (`ERR This Redis command is not allowed from script`).
    let (a, b) = (server(), server());
    let mut t = two(&a, &b, 2, TtlRules::default());
    t.migrating.push(Migration {
        category: "user".into(),
        start: 0,
        end: 16383,
        from: "b".into(),
        to: "a".into(),
        epoch: 2,
        target_serves: None,
    });
    let sidecar = Sidecar::start(&t, &SECRETS);
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let client = sidecar.client();
    let mut pusher = client.get_multiplexed_async_connection().await.unwrap();
    // Each wait starts before its data arrives, which comes through the sidecar too.
    async fn waits<T: redis::FromRedisValue + Send + 'static>(
        client: &redis::Client,
        config: &redis::AsyncConnectionConfig,
        cmd: redis::Cmd,
    ) -> tokio::task::JoinHandle<redis::RedisResult<T>> {
        let mut c = client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .unwrap();
        tokio::spawn(async move { cmd.query_async::<T>(&mut c).await })
    }
    let settle = || tokio::time::sleep(Duration::from_millis(300));

    let one = waits::<Option<(String, String)>>(
        &client,
        &config,
        redis::cmd("BLPOP").arg("user:q1").arg(10).clone(),
    )
    .await;
    let two_keys = waits::<Option<(String, String)>>(
        &client,
        &config,
        redis::cmd("BRPOP")
            .arg("user:q2")
            .arg("user:q3")
            .arg(10)
            .clone(),
    )
    .await;
    let zset = waits::<Option<(String, String, f64)>>(
        &client,
        &config,
        redis::cmd("BZPOPMIN").arg("user:z").arg(10).clone(),
    )
    .await;
    let moved = waits::<Option<String>>(
        &client,
        &config,
        redis::cmd("BLMOVE")
            .arg("user:src")
            .arg("user:dst")
            .arg("LEFT")
            .arg("RIGHT")
            .arg(10)
            .clone(),
    )
    .await;
    let stream = waits::<redis::Value>(
        &client,
        &config,
        redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(10_000)
            .arg("STREAMS")
            .arg("user:events")
            .arg("$")
            .clone(),
    )
    .await;
    settle().await;
    let _: i64 = pusher.rpush("user:q1", "job-1").await.unwrap();
    let _: i64 = pusher.rpush("user:q3", "job-3").await.unwrap();
    let _: i64 = pusher.zadd("user:z", "m", 2.5).await.unwrap();
    let _: i64 = pusher.rpush("user:src", "item").await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg("user:events")
        .arg("*")
        .arg("f")
        .arg("v")
        .query_async(&mut pusher)
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(8), one)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Some(("user:q1".to_owned(), "job-1".to_owned()))
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(8), two_keys)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Some(("user:q3".to_owned(), "job-3".to_owned()))
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(8), zset)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Some(("user:z".to_owned(), "m".to_owned(), 2.5))
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(8), moved)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Some("item".to_owned())
    );
    let events = tokio::time::timeout(Duration::from_secs(8), stream)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(format!("{events:?}").contains("user:events"), "{events:?}");
    // The data was on the source (nothing imported): popped there, nothing left behind.
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    let dst: Vec<String> = on_b.lrange("user:dst", 0, -1).await.unwrap();
    assert_eq!(dst, ["item"]);
    // And a wait that times out answers nil, as Redis does.
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let none: Option<(String, String, f64)> = redis::cmd("BZPOPMAX")
        .arg("user:empty")
        .arg("user:empty2")
        .arg(0.3)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(none, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_before_the_fences_are_heard_never_reaches_a_fenced_instance() {
    // A sidecar that starts with a table older than a failover (restarted while its mounted
    // table lags, as in chaos seed 3) must not send a single write to the failed-over
    // instance, even before its first heartbeat round: the fences come with the greeting of
    // any instance that recorded the failover notice.
    let (a, b) = (server(), server());
    // b's failover notice (fence v2) is recorded on a only, as the operator does while b is
    // unreachable; b itself does not know it.
    let mut on_a = a.client().get_multiplexed_async_connection().await.unwrap();
    fence::raise(&mut on_a, "test/test", &[("b".to_owned(), 2)])
        .await
        .unwrap();
    let stale = two(&a, &b, 1, TtlRules::default());
    let sidecar = Sidecar::start(&stale, &SECRETS);
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Writes of a key b serves in the stale table, as fast as they are answered, from the
    // moment the sidecar accepts clients until they are refused for the fence.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut replies = Vec::new();
    loop {
        let r: redis::RedisResult<()> = c.set("user:late", "v").await;
        let text = match &r {
            Ok(()) => "OK".to_owned(),
            Err(e) => e.to_string(),
        };
        let fenced = text.contains("behind the fleet") || text.contains("fence");
        replies.push(text);
        if fenced || Instant::now() > deadline {
            break;
        }
    }
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    let landed: Option<String> = on_b.get("user:late").await.unwrap();
    assert_eq!(
        landed, None,
        "a write routed by a fenced table ran on b; replies: {replies:?}"
    );
    assert!(!replies.iter().any(|r| r == "OK"), "{replies:?}");
}

/// What [`while_b_greets`] leaves: the request's reply, and b to look at (the servers and the
/// sidecar live as long as this).
struct Raced {
    reply: Result<redis::Value, String>,
    on_b: redis::aio::MultiplexedConnection,
    _fleet: (RedisServer, RedisServer, Sidecar),
}

/// A connection to `sidecar` that waits for a reply as long as it takes.
async fn patient_client(sidecar: &Sidecar) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    sidecar
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// Two servers, b fenced at v2 on itself (as the Job does on the instances it moves data
/// between) after `prepare` ran on it, and a sidecar started on table v1 while b is stopped:
/// b's first connection waits in its handshake, and `request` — sent by a client that waits
/// for its reply as long as it takes — waits for it. b is continued 300 ms later; the reply
/// comes within 10 s.
async fn while_b_greets(
    prepare: impl AsyncFnOnce(&mut redis::aio::MultiplexedConnection),
    request: redis::Cmd,
) -> Raced {
    let (a, b) = (server(), server());
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    prepare(&mut on_b).await;
    fence::raise(&mut on_b, "test/test", &[("b".to_owned(), 2)])
        .await
        .unwrap();
    let stale = two(&a, &b, 1, TtlRules::default());
    let pid = b.pid().unwrap();
    assert!(support::process::signal(pid, "-STOP"));
    let sidecar = Sidecar::start(&stale, &SECRETS);
    let mut c = patient_client(&sidecar).await;
    let sent = tokio::spawn(async move {
        let r: redis::RedisResult<redis::Value> = request.query_async(&mut c).await;
        r.map_err(|e| e.to_string())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(support::process::signal(pid, "-CONT"));
    let reply = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("an answer within 10 s")
        .unwrap();
    Raced {
        reply,
        on_b,
        _fleet: (a, b, sidecar),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_while_the_first_connection_is_made_never_reaches_a_fenced_instance() {
    // Chaos seed 15 (60 s): a sidecar restarted with a lagging table took a write the moment
    // it accepted clients. The write waited for the instance's first connection, whose
    // greeting then showed the instance fenced above that table, and was sent all the same
    // (its reply withheld): it recreated a key on an instance whose range had moved and whose
    // copies were freed, and a sidecar on the migrating table read it back through the guard.
    let mut set = redis::cmd("SET");
    set.arg("user:late").arg("v");
    // Bound whole: the servers and the sidecar must outlive the checks.
    let Raced {
        reply,
        mut on_b,
        _fleet,
    } = while_b_greets(async |_| {}, set).await;
    let landed: Option<String> = on_b.get("user:late").await.unwrap();
    assert_eq!(
        landed, None,
        "a write routed by a fenced table ran on b; its reply: {reply:?}"
    );
    let refused = reply.expect_err("refused");
    assert!(refused.contains("behind the fleet"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_whose_connection_hears_a_fence_never_runs_there() {
    // The same race on a connection of its own (blocking commands, WATCH): admitted before
    // the fences were heard, opened, greeted with the fence — and then sent all the same.
    let mut pop = redis::cmd("BLMOVE");
    pop.arg("user:{q}src")
        .arg("user:{q}dst")
        .arg("LEFT")
        .arg("RIGHT")
        .arg(1);
    let push = async |b: &mut redis::aio::MultiplexedConnection| {
        let _: () = b.rpush("user:{q}src", "job-1").await.unwrap();
    };
    // Bound whole: the servers and the sidecar must outlive the checks.
    let Raced {
        reply,
        mut on_b,
        _fleet,
    } = while_b_greets(push, pop).await;
    let left: Vec<String> = on_b.lrange("user:{q}src", 0, -1).await.unwrap();
    assert_eq!(
        left,
        ["job-1"],
        "a pop routed by a fenced table ran on b; its reply: {reply:?}"
    );
    let refused = reply.expect_err("refused");
    assert!(refused.contains("behind the fleet"), "{refused}");
}

#[tokio::test]
async fn a_transaction_after_a_failed_watch_is_refused() {
    // Review: a WATCH the sidecar could not carry out (keys on another instance than the ones
    // already watched, a connection lost, keys in transit) answered an error, and the next EXEC
    // ran as if every key named were watched — a change to one of them went unnoticed.
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 1, TtlRules::default()), &SECRETS);
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut other = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("WATCH")
        .arg("user:k")
        .query_async(&mut c)
        .await
        .unwrap();
    let refused: redis::RedisResult<()> =
        redis::cmd("WATCH").arg("auth:k").query_async(&mut c).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("CROSSINSTANCE")),
        "{refused:?}"
    );
    // Another client changes the key whose WATCH failed.
    let _: () = other.set("auth:k", "changed").await.unwrap();
    let _: () = redis::cmd("MULTI").query_async(&mut c).await.unwrap();
    let queued: String = redis::cmd("SET")
        .arg("user:k")
        .arg("written")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(queued, "QUEUED");
    let exec: redis::RedisResult<redis::Value> = redis::cmd("EXEC").query_async(&mut c).await;
    let text = format!("{exec:?}");
    assert!(text.to_lowercase().contains("execabort"), "{text}");
    let written: Option<String> = other.get("user:k").await.unwrap();
    assert_eq!(written, None, "the transaction ran: {text}");
    // Then the client starts over: a new WATCH and EXEC work.
    let _: () = redis::cmd("WATCH")
        .arg("user:k")
        .query_async(&mut c)
        .await
        .unwrap();
    let ok: Option<Vec<String>> = redis::pipe()
        .atomic()
        .set("user:k", "written")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ok.is_some());
    let written: Option<String> = other.get("user:k").await.unwrap();
    assert_eq!(written.as_deref(), Some("written"));
}

/// A frozen instance (SIGSTOP: the connection stays open, nothing answers) fails a request
/// within the request timeout — also when the connection was idle before it, so that its read
/// had begun with nothing in flight. Before, that read waited without a limit and the client
/// hung until the instance woke up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_fails_requests_within_the_request_timeout_after_an_idle_spell() {
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start_with(
        &two(&a, &b, 1, TtlRules::default()),
        &SECRETS,
        &["--request-timeout", "1s"],
    );
    // The client waits as long as it takes: the sidecar must be the one to answer.
    let mut c = patient_client(&sidecar).await;
    let _: () = c.set("user:1", "x").await.unwrap();
    // Idle: the lane's reader waits for bytes with nothing in flight.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let pid = b.pid().unwrap();
    assert!(support::process::signal(pid, "-STOP"));
    let started = Instant::now();
    let reply: redis::RedisResult<Option<String>> =
        tokio::time::timeout(Duration::from_secs(8), c.get("user:1"))
            .await
            .expect("an answer, not a hang");
    let took = started.elapsed();
    assert!(support::process::signal(pid, "-CONT"));
    let err = reply.expect_err("the instance is frozen");
    assert!(err.to_string().contains("no reply within"), "{err}");
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_tells_each_instance_how_fast_it_answered_this_sidecar() {
    // What a rebalance Job paces its copy by: every heartbeat carries, to each instance, the
    // 99th percentile of that instance's answers to the sidecar since the heartbeat before.
    use redis_fleet::redis::protocol::heartbeat::read_latencies;
    let (a, b) = (server(), server());
    let sidecar = Sidecar::start(&two(&a, &b, 1, TtlRules::default()), &SECRETS);
    let client = sidecar.client();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut on_a = a.client().get_multiplexed_async_connection().await.unwrap();
    let mut on_b = b.client().get_multiplexed_async_connection().await.unwrap();
    // One request in ten busies `a` for 25 ms: more than 1 % of its answers are that slow.
    const SLOW: &str = "local t = redis.call('TIME') local from = t[1] * 1000000 + t[2] \
        repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - from >= 25000 return 1";
    let load = |slow: bool, c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            let until = Instant::now() + Duration::from_millis(2_500);
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                if slow && n.is_multiple_of(10) {
                    let _: i64 = redis::cmd("EVAL")
                        .arg(SLOW)
                        .arg(1)
                        .arg("auth:slow")
                        .query_async(&mut c)
                        .await
                        .unwrap();
                } else {
                    let _: Option<String> = c.get(format!("auth:{n}")).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let policy = "test/test";
    load(true, &mut c).await;
    let slow = read_latencies(&mut on_a, policy).await.unwrap();
    assert_eq!(slow.len(), 1, "{slow:?}");
    let (id, stamped) = slow.iter().next().unwrap();
    let report = stamped.report;
    assert!(id.starts_with("test-sidecar"), "{id}");
    assert!(report.p99_micros >= 25_000, "{report:?}");
    assert!(report.requests >= 20, "{report:?}");
    // `b` served nothing: no report there.
    assert!(read_latencies(&mut on_b, policy).await.unwrap().is_empty());

    // Fast requests only: a later report says so. (A loaded machine may stall a few of a
    // round's requests past 12.5 ms: another round of load then, up to a deadline; a report
    // stuck on the slow round's latency never passes.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let fast = loop {
        load(false, &mut c).await;
        let fast = read_latencies(&mut on_a, policy).await.unwrap();
        if fast[id].report.p99_micros < 12_500 || Instant::now() > deadline {
            break fast;
        }
    };
    let report = fast[id].report;
    assert!(report.p99_micros < 12_500, "{report:?}");
    assert!(
        fast[id].at_ms > stamped.at_ms,
        "{:?} after {stamped:?}",
        fast[id]
    );
    // Nothing sent since: the report goes (within two heartbeats; more on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !read_latencies(&mut on_a, policy).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the report stayed with nothing sent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An instance that stops answering is slow to a copy's pacing, not silent: a request that
    // timed out (the sidecar waits 1 s here) counts as a reply that took that long, and the
    // reports of the rounds that could not reach the stopped instance come with the next one.
    let pid = b.pid().unwrap();
    assert!(support::process::signal(pid, "-STOP"));
    let frozen = tokio::time::timeout(
        Duration::from_secs(3),
        c.get::<_, Option<String>>("user:frozen"),
    )
    .await;
    assert!(!matches!(frozen, Ok(Ok(_))), "a stopped instance answered");
    // Heartbeat rounds take the count meanwhile and fail (each waits 1 s for its answer,
    // and the next begins a second later): at least one did before the instance answers again.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert!(support::process::signal(pid, "-CONT"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        if let Some(r) = read_latencies(&mut on_b, policy).await.unwrap().get(id) {
            break r.report;
        }
        assert!(
            Instant::now() < deadline,
            "no report on the instance that stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(report.p99_micros >= 1_000_000, "{report:?}");
}
