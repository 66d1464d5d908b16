//! Client libraries nobody here wrote, each running a small application workload (strings,
//! hashes, lists, pipelines, a transaction and a script on one instance, SCAN, Pub/Sub from
//! another pod's sidecar) through real sidecars in front of two real redis-servers — once on
//! a settled table and once while a range migrates. Each workload lives in
//! `tests/clients/<lang>/` with its lock file; `tests/clients/install.sh <lang>` installs it
//! (once, cached under `~/.cache/redis-fleet/clients/`).
//!
//! The README's compatibility table is this file's matrix:
//! `cargo test --test clients -- --nocapture` prints one line per client × protocol × table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use redis_fleet::redis::resp::Value;
use redis_fleet::routing::slots::key_slot;
use redis_fleet::routing::table::{
    CategoryReplication, Migration, ReplicationMode, RoutingTable, SlotOwner, TtlRules,
};
use support::resp::RawConn;
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{RedisOptions, RedisServer};

/// `user:` on a, `session:` on b, `notifications:` on a, the rest split by slot.
fn fleet(a: &RedisServer, b: &RedisServer) -> RoutingTable {
    table(
        1,
        vec![("a", endpoint(a, None)), ("b", endpoint(b, None))],
        vec![
            category("user", &["user:"], TtlRules::default(), &[(0, 16383, "a")]),
            category(
                "session",
                &["session:"],
                TtlRules::default(),
                &[(0, 16383, "b")],
            ),
            category(
                "notifications",
                &["notifications:"],
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

/// The same fleet while `user:` migrates from a to b (slots 0–8191) and the default category
/// swaps its halves (queues under `{bull}`, transactions and scripts under `{order-…}`) — the
/// path the data protocol's guard serves.
fn migrating(a: &RedisServer, b: &RedisServer) -> RoutingTable {
    let mut t = fleet(a, b);
    t.version = 2;
    for (category, start, end, from, to) in [
        ("user", 0, 8191, "a", "b"),
        ("default", 0, 8191, "a", "b"),
        ("default", 8192, 16383, "b", "a"),
    ] {
        t.migrating.push(Migration {
            category: category.into(),
            start,
            end,
            from: from.into(),
            to: to.into(),
            epoch: 2,
            target_serves: None,
        });
    }
    t
}

/// The settled fleet with the default category (the queues under `{bull}`) replicated `Sync`,
/// each half on the other instance.
fn replicated(a: &RedisServer, b: &RedisServer) -> RoutingTable {
    let mut t = fleet(a, b);
    let default = t
        .categories
        .iter_mut()
        .find(|c| c.name == "default")
        .unwrap();
    default.replication = Some(CategoryReplication {
        mode: ReplicationMode::Sync,
        replicas: vec![
            SlotOwner::from((0, 8191, "b".to_owned())),
            SlotOwner::from((8192, 16383, "a".to_owned())),
        ],
        seeding: Vec::new(),
        outgoing: Vec::new(),
    });
    t
}

fn install(lang: &str) -> PathBuf {
    let script = support::control_plane::project_root().join("tests/clients/install.sh");
    let out = Command::new(&script)
        .arg(lang)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "installing the {lang} client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs one workload; returns its output, failing the test with it when it failed.
fn run(name: &str, mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} failed:\n{text}");
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("")
        .to_owned();
    println!("{name:<40} passes ({summary})");
    text
}

struct Pods {
    _a: RedisServer,
    _b: RedisServer,
    one: Sidecar,
    two: Sidecar,
}

fn pods(migrate: bool) -> Pods {
    let a = RedisServer::start(RedisOptions::default());
    let b = RedisServer::start(RedisOptions::default());
    let t = if migrate {
        migrating(&a, &b)
    } else {
        fleet(&a, &b)
    };
    let one = Sidecar::start(&t, &[]);
    let two = Sidecar::start(&t, &[]);
    Pods {
        _a: a,
        _b: b,
        one,
        two,
    }
}

fn python(pods: &Pods, protocol: &str, label: &str) {
    let venv = install("python");
    let workload = support::control_plane::project_root().join("tests/clients/python/workload.py");
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(&workload)
        .arg(pods.one.port.to_string())
        .arg(pods.two.port.to_string())
        .arg(protocol);
    run(&format!("redis-py 8.1.0 {label}"), cmd);
}

#[test]
fn redis_py() {
    for migrate in [false, true] {
        let pods = pods(migrate);
        let table = if migrate { "migrating" } else { "settled" };
        python(&pods, "default", &format!("RESP3 (default), {table}"));
        python(&pods, "2", &format!("RESP2, {table}"));
    }
}

#[test]
fn go_redis() {
    let dir = install("go");
    for migrate in [false, true] {
        let pods = pods(migrate);
        let table = if migrate { "migrating" } else { "settled" };
        let mut cmd = Command::new(dir.join("workload"));
        cmd.arg(pods.one.port.to_string())
            .arg(pods.two.port.to_string());
        run(&format!("go-redis v9.23.0 RESP3 (default), {table}"), cmd);
    }
}

/// The Node workload (`tests/clients/node/workload.mjs`) with `client`, run from the
/// installed dependencies.
fn node(pods: &Pods, client: &str, label: &str) {
    run(label, node_command(pods, client));
}

fn node_command(pods: &Pods, client: &str) -> Command {
    let dir = install("node");
    let workload = support::control_plane::project_root().join("tests/clients/node/workload.mjs");
    let copy = dir.join("workload.mjs");
    std::fs::copy(&workload, &copy).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&copy)
        .arg(client)
        .arg(pods.one.port.to_string())
        .arg(pods.two.port.to_string());
    cmd
}

#[test]
fn ioredis() {
    for migrate in [false, true] {
        let pods = pods(migrate);
        let table = if migrate { "migrating" } else { "settled" };
        node(&pods, "ioredis", &format!("ioredis 6.0.0 RESP2, {table}"));
    }
}

#[test]
fn node_redis() {
    for migrate in [false, true] {
        let pods = pods(migrate);
        let table = if migrate { "migrating" } else { "settled" };
        node(
            &pods,
            "node-redis",
            &format!("node-redis 6.3.1 RESP2 (default), {table}"),
        );
        node(
            &pods,
            "node-redis-resp3",
            &format!("node-redis 6.3.1 RESP3, {table}"),
        );
    }
}

#[test]
fn bullmq() {
    for migrate in [false, true] {
        let pods = pods(migrate);
        let table = if migrate { "migrating" } else { "settled" };
        node(&pods, "bullmq", &format!("BullMQ 6.7.0 (ioredis), {table}"));
    }
}

/// BullMQ on a replicated category: its Lua scripts (which build job keys they do not
/// declare), its blocking waits and its transactions take the replicated paths. The workload
/// passes, and then every key of the queue holds the same on its instance and on its replica.
#[test]
fn bullmq_on_a_replicated_category() {
    let a = RedisServer::start(RedisOptions::default());
    let b = RedisServer::start(RedisOptions::default());
    let t = replicated(&a, &b);
    let pods = Pods {
        one: Sidecar::start(&t, &[]),
        two: Sidecar::start(&t, &[]),
        _a: a,
        _b: b,
    };
    let mut cmd = node_command(&pods, "bullmq");
    cmd.env("KEEP_QUEUE", "1");
    run("BullMQ 6.7.0 (ioredis), replicated", cmd);
    let (owner, replica) = if key_slot(b"{bull}") <= 8191 {
        (pods._a.port, pods._b.port)
    } else {
        (pods._b.port, pods._a.port)
    };
    let (mut owner, mut replica) = (RawConn::open(owner), RawConn::open(replica));
    let on_owner = queue_keys(&mut owner);
    assert!(on_owner.len() > 20, "the queue holds only {on_owner:?}");
    let names = |keys: &[Vec<u8>]| -> Vec<String> {
        keys.iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    assert_eq!(
        names(&on_owner),
        names(&queue_keys(&mut replica)),
        "the queue's keys on its instance (left) and on its replica (right)"
    );
    for key in &on_owner {
        assert_eq!(
            owner.value_of(key),
            replica.value_of(key),
            "{} on the replica",
            String::from_utf8_lossy(key)
        );
    }
    println!(
        "{:<40} {} keys of the queue the same on its replica",
        "",
        on_owner.len()
    );
}

/// Every key under `{bull}` on an instance, sorted.
fn queue_keys(conn: &mut RawConn) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        let reply = conn.call(&[
            b"SCAN".as_slice(),
            &cursor,
            b"MATCH",
            b"{bull}*",
            b"COUNT",
            b"1000",
        ]);
        let Value::Array(parts) = reply else {
            panic!("SCAN answered {reply:?}");
        };
        let [Value::Bulk(next), Value::Array(found)] = parts.as_slice() else {
            panic!("SCAN answered {parts:?}");
        };
        keys.extend(found.iter().map(|k| match k {
            Value::Bulk(k) => k.to_vec(),
            other => panic!("a key {other:?}"),
        }));
        if next.as_ref() == b"0" {
            break;
        }
        cursor = next.to_vec();
    }
    keys.sort();
    keys
}

#[test]
fn jedis() {
    let dir = install("java");
    for migrate in [false, true] {
        let pods = pods(migrate);
        let table = if migrate { "migrating" } else { "settled" };
        for (protocol, label) in [("2", "RESP2 (default)"), ("3", "RESP3")] {
            let mut cmd = Command::new("java");
            cmd.arg("-cp")
                .arg(format!(
                    "{}:{}/*",
                    dir.join("classes").display(),
                    dir.join("deps").display()
                ))
                .arg("Workload")
                .arg(pods.one.port.to_string())
                .arg(pods.two.port.to_string())
                .arg(protocol);
            run(&format!("Jedis 8.0.2 {label}, {table}"), cmd);
        }
    }
}
