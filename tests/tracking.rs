//! Client-side caching (`CLIENT TRACKING`) through sidecars in front of two redis-servers:
//! a client of one sidecar reads keys, writes through another sidecar (another application
//! pod) or on an instance directly invalidate them — RESP3 push frames, or messages on
//! `__redis__:invalidate` to a RESP2 client it redirects to; BCAST with prefixes; OPTIN;
//! flushes when the routing table changes; redis-py's own client-side cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use redis_fleet::redis::resp::Value;
use redis_fleet::routing::table::{RoutingTable, TtlRules};
use support::resp::RawConn;
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{RedisOptions, RedisServer};

/// `{a}…` keys on a, `{h}…` keys on b (slots on either side of 8192).
fn fleet(a: &RedisServer, b: &RedisServer, version: u64) -> RoutingTable {
    table(
        version,
        vec![("a", endpoint(a, None)), ("b", endpoint(b, None))],
        vec![category(
            "default",
            &[],
            TtlRules::default(),
            &[(0, 8191, "a"), (8192, 16383, "b")],
        )],
    )
}

fn bulk(s: &str) -> Value {
    Value::Bulk(s.to_owned().into())
}

fn ok() -> Value {
    Value::Simple("OK".into())
}

/// `>2 invalidate [keys]`.
fn invalidate(keys: &[&str]) -> Value {
    Value::Push(vec![
        bulk("invalidate"),
        Value::Array(keys.iter().map(|k| bulk(k)).collect()),
    ])
}

/// `>2 invalidate _`.
fn flush() -> Value {
    Value::Push(vec![bulk("invalidate"), Value::Null])
}

fn resp3(port: u16) -> RawConn {
    let mut c = RawConn::open(port);
    assert!(matches!(c.call(&["HELLO", "3"]), Value::Map(_)));
    c
}

/// Nothing arrives on `c` within a moment (a PING's answer comes first).
fn quiet(c: &mut RawConn) {
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.cmd("PING"), Value::Simple("PONG".into()));
}

#[test]
fn default_mode_invalidates_the_keys_read_from_other_sidecars_and_instances() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let t = fleet(&a, &b, 1);
    let pod1 = Sidecar::start(&t, &[]);
    let pod2 = Sidecar::start(&t, &[]);
    let mut writer = RawConn::open(pod2.port);
    writer.cmd("MSET {a}k1 1 {a}k2 2 {h}k3 3 {a}k4 4");

    let mut c = resp3(pod1.port);
    assert_eq!(c.cmd("CLIENT GETREDIR"), Value::Integer(-1));
    assert_eq!(c.cmd("CLIENT TRACKING ON"), ok());
    assert_eq!(c.cmd("CLIENT GETREDIR"), Value::Integer(0));
    assert_eq!(
        c.cmd("CLIENT TRACKINGINFO"),
        Value::Map(vec![
            (bulk("flags"), Value::Array(vec![bulk("on")])),
            (bulk("redirect"), Value::Integer(0)),
            (bulk("prefixes"), Value::Array(vec![])),
        ])
    );
    assert_eq!(c.cmd("GET {a}k1"), bulk("1"));
    assert_eq!(
        c.cmd("MGET {a}k2 {h}k3"),
        Value::Array(vec![bulk("2"), bulk("3")])
    );
    assert_eq!(c.cmd("GET {a}k4"), bulk("4"));

    // A write through another sidecar.
    assert_eq!(writer.cmd("SET {a}k1 one"), ok());
    assert_eq!(c.read().unwrap(), invalidate(&["{a}k1"]));
    // A write on the instance directly.
    let mut direct = RawConn::open(b.port);
    assert_eq!(direct.cmd("SET {h}k3 three"), ok());
    assert_eq!(c.read().unwrap(), invalidate(&["{h}k3"]));
    // A key never read, and one invalidated already (forgotten since): nothing; then a key
    // read on the same instance: its invalidation is the next frame.
    assert_eq!(writer.cmd("SET {a}never x"), ok());
    assert_eq!(writer.cmd("SET {a}k1 again"), ok());
    assert_eq!(writer.cmd("DEL {a}k2"), Value::Integer(1));
    assert_eq!(c.read().unwrap(), invalidate(&["{a}k2"]));
    // An expiry is a modification too.
    assert_eq!(writer.cmd("PEXPIRE {a}k4 1"), Value::Integer(1));
    assert_eq!(c.read().unwrap(), invalidate(&["{a}k4"]));
    quiet(&mut c);

    // Off: reads are no longer remembered, writes no longer reported.
    assert_eq!(c.cmd("GET {a}k1"), bulk("again"));
    assert_eq!(c.cmd("CLIENT TRACKING OFF"), ok());
    assert_eq!(c.cmd("CLIENT GETREDIR"), Value::Integer(-1));
    assert_eq!(writer.cmd("SET {a}k1 off"), ok());
    quiet(&mut c);
    assert_eq!(
        c.cmd("CLIENT TRACKINGINFO"),
        Value::Map(vec![
            (bulk("flags"), Value::Array(vec![bulk("off")])),
            (bulk("redirect"), Value::Integer(-1)),
            (bulk("prefixes"), Value::Array(vec![])),
        ])
    );
}

#[test]
fn bcast_prefixes_optin_and_refusals() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let t = fleet(&a, &b, 1);
    let pod1 = Sidecar::start(&t, &[]);
    let pod2 = Sidecar::start(&t, &[]);
    let mut writer = RawConn::open(pod2.port);

    let mut c = resp3(pod1.port);
    let refused = c.cmd("CLIENT TRACKING ON NOLOOP");
    assert!(
        matches!(&refused, Value::Error(e) if e.starts_with(b"ERR NOLOOP is not supported")),
        "{refused:?}"
    );
    assert!(c.cmd("CLIENT TRACKING ON PREFIX user:").is_error());
    assert!(c.cmd("CLIENT TRACKING ON BCAST OPTIN").is_error());
    assert!(c.cmd("CLIENT CACHING yes").is_error());

    // BCAST: every key under a prefix, read or not, whichever instance holds it.
    assert_eq!(
        c.cmd("CLIENT TRACKING ON BCAST PREFIX user: PREFIX {h}user:"),
        ok()
    );
    assert_eq!(
        c.cmd("CLIENT TRACKINGINFO"),
        Value::Map(vec![
            (bulk("flags"), Value::Array(vec![bulk("on"), bulk("bcast")])),
            (bulk("redirect"), Value::Integer(0)),
            (
                bulk("prefixes"),
                Value::Array(vec![bulk("user:"), bulk("{h}user:")])
            ),
        ])
    );
    assert_eq!(writer.cmd("SET user:1 x"), ok());
    assert_eq!(c.read().unwrap(), invalidate(&["user:1"]));
    assert_eq!(writer.cmd("SET other:1 x"), ok());
    assert_eq!(writer.cmd("SET {h}user:2 x"), ok());
    assert_eq!(c.read().unwrap(), invalidate(&["{h}user:2"]));
    quiet(&mut c);
    assert_eq!(c.cmd("CLIENT TRACKING OFF"), ok());

    // OPTIN: only the command after CLIENT CACHING yes is tracked.
    assert_eq!(c.cmd("CLIENT TRACKING ON OPTIN"), ok());
    assert_eq!(c.cmd("GET {a}plain"), Value::Null);
    assert_eq!(c.cmd("CLIENT CACHING yes"), ok());
    assert_eq!(c.cmd("GET {a}cached"), Value::Null);
    assert_eq!(c.cmd("GET {a}after"), Value::Null);
    assert_eq!(writer.cmd("MSET {a}plain 1 {a}after 1"), ok());
    assert_eq!(writer.cmd("SET {a}cached 1"), ok());
    assert_eq!(c.read().unwrap(), invalidate(&["{a}cached"]));
    quiet(&mut c);
}

#[test]
fn resp2_clients_redirect_to_a_subscribed_connection() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let t = fleet(&a, &b, 1);
    let pod1 = Sidecar::start(&t, &[]);
    let pod2 = Sidecar::start(&t, &[]);
    let mut writer = RawConn::open(pod2.port);

    let mut inbox = RawConn::open(pod1.port);
    let Value::Integer(id) = inbox.cmd("CLIENT ID") else {
        panic!("CLIENT ID")
    };
    inbox.cmd("SUBSCRIBE __redis__:invalidate");

    let mut c = RawConn::open(pod1.port);
    let missing = c.cmd("CLIENT TRACKING ON REDIRECT 999999");
    assert!(
        matches!(&missing, Value::Error(e) if e.starts_with(b"ERR The client ID you want redirect to does not exist")),
        "{missing:?}"
    );
    assert_eq!(
        c.call(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()]),
        ok()
    );
    assert_eq!(c.cmd("CLIENT GETREDIR"), Value::Integer(id));
    assert_eq!(c.cmd("GET {h}r"), Value::Null);
    assert_eq!(writer.cmd("SET {h}r 1"), ok());
    assert_eq!(
        inbox.read().unwrap(),
        Value::Array(vec![
            bulk("message"),
            bulk("__redis__:invalidate"),
            Value::Array(vec![bulk("{h}r")]),
        ])
    );
    // Redis flushes are passed on: a nil message.
    assert_eq!(c.cmd("GET {h}r"), bulk("1"));
    let mut direct = RawConn::open(b.port);
    assert_eq!(direct.cmd("FLUSHALL"), ok());
    assert_eq!(
        inbox.read().unwrap(),
        Value::Array(vec![
            bulk("message"),
            bulk("__redis__:invalidate"),
            Value::Null
        ])
    );
}

#[test]
fn a_table_change_flushes_tracking_clients() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let pod1 = Sidecar::start(&fleet(&a, &b, 1), &[]);
    let mut c = resp3(pod1.port);
    assert_eq!(c.cmd("CLIENT TRACKING ON"), ok());
    assert_eq!(c.cmd("GET {a}k"), Value::Null);
    // The halves swap instances: whatever was cached may be served elsewhere now.
    let swapped = table(
        2,
        vec![("a", endpoint(&a, None)), ("b", endpoint(&b, None))],
        vec![category(
            "default",
            &[],
            TtlRules::default(),
            &[(0, 8191, "b"), (8192, 16383, "a")],
        )],
    );
    pod1.update_table(&swapped);
    c.set_timeout(Duration::from_secs(15));
    assert_eq!(c.read().unwrap(), flush());
}

/// redis-py's own client-side cache (`cache_config`, RESP3) through a sidecar, with writes
/// through another sidecar: `tests/clients/python/caching.py`.
#[test]
fn redis_py_client_side_cache() {
    let (a, b) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let t = fleet(&a, &b, 1);
    let pod1 = Sidecar::start(&t, &[]);
    let pod2 = Sidecar::start(&t, &[]);
    let root = support::control_plane::project_root();
    let install = Command::new(root.join("tests/clients/install.sh"))
        .arg("python")
        .output()
        .expect("install.sh");
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let venv = String::from_utf8_lossy(&install.stdout).trim().to_owned();
    let out = Command::new(std::path::Path::new(&venv).join("bin/python"))
        .arg(root.join("tests/clients/python/caching.py"))
        .arg(pod1.port.to_string())
        .arg(pod2.port.to_string())
        .output()
        .expect("python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "caching.py failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
