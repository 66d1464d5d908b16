//! The operator's connection to an instance (`redis::serial::SerialConnection`) against real
//! redis-servers: commands, pipelines, transactions and scripts answer as on the `redis`
//! crate's own connection; errors keep the kinds probes classify; and a request that times out
//! or is abandoned half-way never hands its late reply to the next request, which connects
//! afresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use redis_fleet::redis::connect::{Credentials, SecretString, Target, TlsOptions};
use redis_fleet::redis::serial::SerialConnection;
use support::{RedisOptions, RedisServer};

const TIMEOUT: Duration = Duration::from_secs(2);

fn target(server: &RedisServer) -> Target {
    Target::plain("127.0.0.1", server.port)
}

#[tokio::test]
async fn commands_pipelines_transactions_and_scripts_answer_as_on_the_crates_connection() {
    let server = RedisServer::start(RedisOptions::default());
    let mut serial = SerialConnection::open(&target(&server), TIMEOUT)
        .await
        .unwrap();
    let mut multiplexed = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    let _: () = serial.set("a", "1").await.unwrap();
    let a: String = multiplexed.get("a").await.unwrap();
    assert_eq!(a, "1");
    let n: i64 = serial.incr("a", 41).await.unwrap();
    assert_eq!(n, 42);
    let missing: Option<String> = serial.get("nothing").await.unwrap();
    assert_eq!(missing, None);

    // A pipeline of many commands, each reply in its place.
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    for i in 0..500 {
        pipe.cmd("GET").arg(format!("k{i}"));
    }
    let got: Vec<i64> = pipe.query_async(&mut serial).await.unwrap();
    assert_eq!(got, (0..500).collect::<Vec<i64>>());

    // A transaction: MULTI … EXEC, the replies of EXEC.
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .incr("t", 1)
        .incr("t", 10)
        .query_async(&mut serial)
        .await
        .unwrap();
    assert_eq!((x, y), (1, 11));
    // A transaction the server refuses (a queued command with the wrong arity): the error says
    // why, not only EXECABORT.
    let err = redis::pipe()
        .atomic()
        .incr("t", 1)
        .cmd("GET")
        .query_async::<(i64, ())>(&mut serial)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("wrong number of arguments"),
        "{err}"
    );
    let t: i64 = serial.get("t").await.unwrap();
    assert_eq!(t, 11, "a refused transaction ran");

    // A script the server does not know yet: EVALSHA, NOSCRIPT, then EVAL.
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let r: i64 = script
        .key("s")
        .arg(5)
        .invoke_async(&mut serial)
        .await
        .unwrap();
    assert_eq!(r, 5);
    let r: i64 = script
        .key("s")
        .arg(5)
        .invoke_async(&mut serial)
        .await
        .unwrap();
    assert_eq!(r, 10);

    // A server error is an error of its kind, and the connection goes on.
    let err = redis::cmd("INCR")
        .arg("k1")
        .arg("extra")
        .query_async::<i64>(&mut serial)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("wrong number of arguments"),
        "{err}"
    );
    let _: () = serial.set("w", "text").await.unwrap();
    let err = serial.incr::<_, _, i64>("w", 1).await.unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");
    let pong: String = redis::cmd("PING").query_async(&mut serial).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn clones_take_turns_and_every_reply_goes_to_its_own_request() {
    let server = RedisServer::start(RedisOptions::default());
    let serial = SerialConnection::open(&target(&server), TIMEOUT)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut conn = serial.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200i64 {
                let key = format!("task{t}");
                let n: i64 = conn.incr(&key, 1).await.unwrap();
                assert_eq!(n, i + 1);
                // A pipeline between single commands, from another task meanwhile.
                let (a, b): (i64, String) = redis::pipe()
                    .get(&key)
                    .cmd("ECHO")
                    .arg(format!("{t}:{i}"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!((a, b), (i + 1, format!("{t}:{i}")));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_request_that_times_out_or_is_abandoned_never_hands_its_late_reply_to_the_next() {
    // `DEBUG SLEEP`: the server answers, late.
    let server = RedisServer::start(RedisOptions {
        extra_args: vec!["--enable-debug-command".into(), "yes".into()],
        ..RedisOptions::default()
    });
    let mut conn = SerialConnection::open(&target(&server), Duration::from_millis(200))
        .await
        .unwrap();
    let _: () = conn.set("key", "value").await.unwrap();

    // The connection's own timeout: the server answers after it.
    let err = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg("0.5")
        .query_async::<()>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The late `+OK` is on the old socket; the next request must not take it for its own.
    let next: Option<String> = conn.get("key").await.unwrap();
    assert_eq!(next.as_deref(), Some("value"), "a request after a timeout");

    // A caller's own timeout drops the request half-way.
    let mut conn = SerialConnection::open(&target(&server), TIMEOUT)
        .await
        .unwrap();
    let mut other = conn.clone();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.5")
            .query_async::<()>(&mut conn),
    )
    .await;
    assert!(abandoned.is_err(), "DEBUG SLEEP answered within 100 ms");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let next: Option<String> = other.get("key").await.unwrap();
    assert_eq!(
        next.as_deref(),
        Some("value"),
        "a request after an abandoned one"
    );
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    // The server gone and back: requests fail while it is away, then work again.
    let mut server = server;
    server.stop();
    let err = conn.get::<_, Option<String>>("key").await.unwrap_err();
    assert!(err.is_io_error(), "{err:?}");
    let err = conn.get::<_, Option<String>>("key").await.unwrap_err();
    assert!(err.is_connection_refusal(), "{err:?}");
    server.restart();
    let _: () = conn.set("after", "restart").await.unwrap();
    let v: String = other.get("after").await.unwrap();
    assert_eq!(v, "restart");
}

#[tokio::test]
async fn errors_keep_the_kinds_probes_classify_and_never_show_the_password() {
    let password = "correct-horse-battery";
    let server = RedisServer::start(RedisOptions {
        password: Some(password.into()),
        ..RedisOptions::default()
    });
    let with = |p: &str| Target {
        credentials: Credentials {
            username: None,
            password: Some(SecretString::new(p)),
        },
        ..target(&server)
    };

    let mut ok = SerialConnection::open(&with(password), TIMEOUT)
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut ok).await.unwrap();
    assert_eq!(pong, "PONG");

    let wrong = "wrong-password-here";
    let err = SerialConnection::open(&with(wrong), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");
    assert!(!format!("{err} {err:?}").contains(wrong), "{err:?}");

    // No credentials: the connection opens, the first command is refused.
    let mut none = SerialConnection::open(&target(&server), TIMEOUT)
        .await
        .unwrap();
    let err = redis::cmd("PING")
        .query_async::<String>(&mut none)
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("noauth"), "{err}");

    // Nothing listening.
    let port = server.port;
    drop(server);
    let err = SerialConnection::open(&Target::plain("127.0.0.1", port), TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.is_connection_refusal(), "{err:?}");
}

#[tokio::test]
async fn tls_with_the_servers_ca() {
    let server = RedisServer::start(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    });
    // `port` over TLS, trusting the CA `ca` only.
    let tls = |ca: Vec<u8>, port: u16| Target {
        tls: Some(TlsOptions {
            ca_pem: Some(ca),
            insecure_skip_verify: false,
        }),
        ..Target::plain("localhost", port)
    };
    let mut conn = SerialConnection::open(&tls(server.ca_pem(), server.port), TIMEOUT)
        .await
        .unwrap();
    let _: () = conn.set("over", "tls").await.unwrap();
    let v: String = conn.get("over").await.unwrap();
    assert_eq!(v, "tls");

    // Another CA: the handshake fails, as a TLS failure.
    let other = RedisServer::start(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    });
    let err = SerialConnection::open(&tls(other.ca_pem(), server.port), TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}
