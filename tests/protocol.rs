//! The data protocol's scripts against a real redis-server (`docs/protocol.md`): the guard,
//! the move scripts with their mover token, fences that close older connections, heartbeats.
//! Each test tries to break one rule the protocol relies on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis_fleet::redis::protocol::guard::{self, Decision};
use redis_fleet::redis::protocol::mover::{MoveError, Mover, Restore, Restored, Taken};
use redis_fleet::redis::protocol::{fence, heartbeat, names};
use support::{RedisOptions, RedisServer};

const POLICY: &str = "shop/shop";

async fn conn(server: &RedisServer) -> MultiplexedConnection {
    server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connecting")
}

/// The names of a migrating range of plan 1 of [`POLICY`], with importing marker `marker`.
fn range<'a>(marker: &'a str, urgent: &'a str) -> guard::RangeNames<'a> {
    guard::RangeNames {
        marker,
        groups: GROUPS,
        urgent,
        urgent_groups: URGENT_GROUPS,
    }
}

const GROUPS: &str = "redisfleet:group:shop/shop:1:";
const URGENT_GROUPS: &str = "redisfleet:urgent-groups:shop/shop";

/// Runs a guarded command and returns the raw reply as a frame-ish value.
async fn guarded(
    c: &mut MultiplexedConnection,
    marker: &str,
    keys: &[&str],
    command: &[&str],
) -> (Decision, redis::Value) {
    guarded_as(c, marker, keys, command, false).await
}

/// [`guarded`], for a command that changes nothing when `read`.
async fn guarded_as(
    c: &mut MultiplexedConnection,
    marker: &str,
    keys: &[&str],
    command: &[&str],
    read: bool,
) -> (Decision, redis::Value) {
    guarded_seen(c, marker, keys, command, read, guard::Seen::Unknown).await
}

/// [`guarded_as`], with what the sidecar found on the target (`seen`).
async fn guarded_seen(
    c: &mut MultiplexedConnection,
    marker: &str,
    keys: &[&str],
    command: &[&str],
    read: bool,
    seen: guard::Seen,
) -> (Decision, redis::Value) {
    let keys: Vec<Bytes> = keys.iter().map(|k| Bytes::from(k.to_string())).collect();
    let command: Vec<Bytes> = command.iter().map(|k| Bytes::from(k.to_string())).collect();
    let urgent = names::urgent(POLICY);
    let args = guard::guard_command(range(marker, &urgent), &keys, &[command], true, read, seen);
    let mut cmd = redis::cmd(std::str::from_utf8(&args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(a.as_ref());
    }
    match cmd.query_async::<redis::Value>(c).await {
        Ok(v) => (Decision::Ran, v),
        Err(e) => {
            let code = e.code().unwrap_or_default().to_owned();
            let reply = format!("-{code} x");
            (guard::decision(reply.as_bytes()), redis::Value::Nil)
        }
    }
}

/// The guard of a move into a range its target served already (a drained legacy instance):
/// the source's copy may be older than the target's, so a read of keys all on the source runs
/// there only once the sidecar found the target without them, a write or a transaction of
/// such keys waits for their move, and a script for its slot groups to move whole.
#[tokio::test]
async fn the_guard_of_a_served_range_trusts_the_source_only_where_the_target_lacks_the_keys() {
    use guard::Seen;
    use redis::AsyncCommands;
    use redis_fleet::redis::protocol::mover::TARGET_SERVES;
    let source = RedisServer::start(RedisOptions::default());
    let mut c = conn(&source).await;
    let marker = "redisfleet:importing:shop/shop:7:user:0-16383";
    let _: () = c.set(marker, format!("9{TARGET_SERVES}")).await.unwrap();
    let _: () = c.set("user:a", "legacy").await.unwrap();
    let urgent = names::urgent(POLICY);
    let queued = |c: &mut MultiplexedConnection| {
        let mut c = c.clone();
        let urgent = urgent.clone();
        async move {
            let q: Vec<String> = c.lrange(&urgent, 0, -1).await.unwrap();
            let _: () = c.del(&urgent).await.unwrap();
            q
        }
    };
    let get = ["GET", "user:a"];
    assert_eq!(
        guarded_as(&mut c, marker, &["user:a"], &get, true).await.0,
        Decision::Check
    );
    let (d, v) = guarded_seen(&mut c, marker, &["user:a"], &get, true, Seen::Lacked).await;
    assert_eq!(
        (d, v),
        (Decision::Ran, redis::Value::BulkString(b"legacy".to_vec()))
    );
    let (d, _) = guarded_seen(&mut c, marker, &["user:a"], &get, true, Seen::Held).await;
    assert_eq!(d, Decision::TryAgain);
    assert_eq!(queued(&mut c).await, vec!["user:a"]);
    // A write, whatever was seen: its key moves first.
    for seen in [Seen::Unknown, Seen::Lacked] {
        let (d, _) = guarded_seen(
            &mut c,
            marker,
            &["user:a"],
            &["SET", "user:a", "x"],
            false,
            seen,
        )
        .await;
        assert_eq!(d, Decision::TryAgain);
        assert_eq!(queued(&mut c).await, vec!["user:a"]);
    }
    // A key the source lacks is the target's.
    assert_eq!(
        guarded(&mut c, marker, &["user:new"], &["SET", "user:new", "x"])
            .await
            .0,
        Decision::Ask
    );
    let script = |c: &mut MultiplexedConnection, keys: &[&str], script: bool| {
        let keys: Vec<Bytes> = keys.iter().map(|k| Bytes::from(k.to_string())).collect();
        let args = guard::decision_command(range(marker, &urgent), &keys, script);
        let mut cmd = redis::cmd(std::str::from_utf8(&args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(a.as_ref());
        }
        let mut c = c.clone();
        async move { cmd.query_async::<String>(&mut c).await.unwrap() }
    };
    assert_eq!(
        script(&mut c, &["user:a"], false).await,
        "TRYAGAIN",
        "a transaction"
    );
    assert_eq!(queued(&mut c).await, vec!["user:a"]);
    // A script: by its keys under a Job that keeps no group states (an earlier release's)…
    assert_eq!(
        script(&mut c, &["user:a"], true).await,
        "TRYAGAIN",
        "a script under an older Job"
    );
    assert_eq!(queued(&mut c).await, vec!["user:a"]);
    // … else it waits for its slot group to move whole, then for its keys.
    let _: () = c
        .set(names::slot_groups_in(GROUPS), names::GROUPS_OPEN)
        .await
        .unwrap();
    assert_eq!(
        script(&mut c, &["user:a"], true).await,
        "TRYAGAIN-GROUPS",
        "a script waits for its slot group to move whole"
    );
    let group = names::slot_group_of_key(GROUPS, b"user:a");
    let asked: Vec<Vec<u8>> = c.lrange(URGENT_GROUPS, 0, -1).await.unwrap();
    assert_eq!(asked, vec![group.to_vec()]);
    let _: () = c.set(group.as_ref(), names::GROUP_MOVED).await.unwrap();
    assert_eq!(
        script(&mut c, &["user:a"], true).await,
        "TRYAGAIN",
        "its group moved, but a pod wrote its key on the source again"
    );
    assert_eq!(queued(&mut c).await, vec!["user:a"]);
    let _: () = c.del("user:a").await.unwrap();
    assert_eq!(script(&mut c, &["user:a"], true).await, "ASK");
}

#[tokio::test]
async fn the_guard_runs_on_the_source_until_importing_then_redirects_absent_keys() {
    let source = RedisServer::start(RedisOptions::default());
    let mut c = conn(&source).await;
    let marker = "redisfleet:importing:shop/shop:7:user:0-16383";

    // Not importing: everything runs here, present or not.
    let (d, _) = guarded(&mut c, marker, &["user:a"], &["SET", "user:a", "1"]).await;
    assert_eq!(d, Decision::Ran);
    let (d, v) = guarded(&mut c, marker, &["user:new"], &["GET", "user:new"]).await;
    assert_eq!((d, v), (Decision::Ran, redis::Value::Nil));

    // Importing: present keys run here, absent ones belong to the target.
    let _: () = redis::cmd("SET")
        .arg(marker)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let (d, v) = guarded(&mut c, marker, &["user:a"], &["INCR", "user:a"]).await;
    assert_eq!((d, v), (Decision::Ran, redis::Value::Int(2)));
    let (d, _) = guarded(&mut c, marker, &["user:new"], &["SET", "user:new", "x"]).await;
    assert_eq!(d, Decision::Ask);
    let exists: i64 = redis::cmd("EXISTS")
        .arg("user:new")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0, "an ASKed command must not run on the source");

    // A key in transit: wait.
    let _: () = redis::cmd("SET")
        .arg("redisfleet:tomb:user:t")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let (d, _) = guarded(&mut c, marker, &["user:t"], &["GET", "user:t"]).await;
    assert_eq!(d, Decision::Busy);

    // Some keys here, some not: nothing runs, the present ones are queued for the Job.
    let (d, _) = guarded(
        &mut c,
        marker,
        &["user:a", "user:b"],
        &["RENAME", "user:a", "user:b"],
    )
    .await;
    assert_eq!(d, Decision::TryAgain);
    let a: Option<String> = redis::cmd("GET")
        .arg("user:a")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(a.as_deref(), Some("2"));
    let urgent: Vec<String> = redis::cmd("LRANGE")
        .arg(names::urgent(POLICY))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(urgent, vec!["user:a".to_owned()]);

    // Errors of the command itself come back as they are.
    let keys = [Bytes::from_static(b"user:a")];
    let args = guard::guard_command(
        range(marker, "u"),
        &keys,
        &[vec![
            Bytes::from_static(b"LPUSH"),
            Bytes::from_static(b"user:a"),
            Bytes::from_static(b"x"),
        ]],
        true,
        false,
        guard::Seen::Unknown,
    );
    let mut cmd = redis::cmd("EVAL");
    for a in &args[1..] {
        cmd.arg(a.as_ref());
    }
    let err = cmd.query_async::<redis::Value>(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"));
}

/// The script check's decision for a script declaring `keys` (`None`: not a decision).
async fn script_decision(
    c: &mut MultiplexedConnection,
    marker: &str,
    keys: &[&str],
) -> Option<Decision> {
    let keys: Vec<Bytes> = keys.iter().map(|k| b(k)).collect();
    let args = guard::script_check_command(range(marker, "u"), &keys);
    let mut cmd = redis::cmd("EVAL");
    for a in &args[1..] {
        cmd.arg(a.as_ref());
    }
    let v: redis::Value = cmd.query_async(c).await.unwrap();
    let text = match v {
        redis::Value::SimpleString(s) => format!("+{s}\r\n"),
        redis::Value::Okay => "+OK\r\n".to_owned(),
        other => panic!("{other:?}"),
    };
    guard::check_decision(text.as_bytes())
}

async fn set(c: &mut MultiplexedConnection, key: &str, value: &str) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(c)
        .await
        .unwrap();
}

/// Sets group state `key` to `state` as mover `m` (leaving it when it is `keep`).
async fn set_state(m: &Mover, c: &mut MultiplexedConnection, key: &str, state: &str, keep: &str) {
    m.set_group_states(c, &[key.to_owned()], state, keep)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_script_runs_where_its_whole_slot_groups_are_and_waits_for_them_in_between() {
    let source = RedisServer::start(RedisOptions::default());
    let mut c = conn(&source).await;
    let marker = "redisfleet:importing:shop/shop:1:auth:0-16383";
    // Three queues in three slot groups, BullMQ-style: the script declares the counter and
    // builds the job keys itself.
    let (q1, q2, q3) = ("auth:{q1}:id", "auth:{q2}:id", "auth:{q3}:id");
    let group = |k: &str| names::slot_group_of_key(GROUPS, k.as_bytes());
    assert!(group(q1) != group(q2) && group(q2) != group(q3) && group(q1) != group(q3));

    // Not importing: the source.
    assert_eq!(
        script_decision(&mut c, marker, &[q1]).await,
        Some(Decision::Ran)
    );
    set(&mut c, marker, "1").await;
    // A Job of an older version keeps no group states: the script decides by its keys.
    let older = "auth:{q7}:id";
    assert!(![q1, q2, q3].iter().any(|q| group(q) == group(older)));
    assert_eq!(
        script_decision(&mut c, marker, &[older]).await,
        Some(Decision::Ask)
    );
    let m = mover(names::mover_token(1, 1));
    m.claim(&mut c).await.unwrap();
    let all = names::slot_groups(POLICY, 1);
    set_state(&m, &mut c, &all, names::GROUPS_OPEN, names::KEEP_ANY).await;
    // Importing, the move has touched none of its groups: the source, declared keys present
    // or not (no key of theirs is anywhere else).
    assert_eq!(
        script_decision(&mut c, marker, &[q1]).await,
        Some(Decision::Ran)
    );

    // The Job takes a key of q1's group (not the declared one): the script waits, and asks
    // for the group.
    set(&mut c, "auth:{q1}:job:1", "data").await;
    let taken = m
        .take(&mut c, &[b("auth:{q1}:job:1")], GROUPS, 8 << 20, 0)
        .await
        .unwrap();
    assert!(matches!(taken[0], Taken::Value { .. }), "{taken:?}");
    set(&mut c, q1, "1").await;
    assert_eq!(
        script_decision(&mut c, marker, &[q1]).await,
        Some(Decision::TryAgain),
        "a script whose group is half moved must not run on the source"
    );
    let asked: Vec<String> = redis::cmd("LRANGE")
        .arg(URGENT_GROUPS)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(asked, vec![String::from_utf8(group(q1).to_vec()).unwrap()]);
    // Once the Job says the group moved: the target.
    set_state(
        &m,
        &mut c,
        std::str::from_utf8(&group(q1)).unwrap(),
        names::GROUP_MOVED,
        "",
    )
    .await;
    assert_eq!(
        script_decision(&mut c, marker, &[q1]).await,
        Some(Decision::Ask)
    );
    // A script over a moved and an untouched group waits for both to be moved whole.
    assert_eq!(
        script_decision(&mut c, marker, &[q1, q2]).await,
        Some(Decision::TryAgain)
    );

    // A read the guard sends to the target (a miss here) creates nothing there: its group
    // stays untouched, and the script still runs on the source.
    let (d, _) = guarded_as(
        &mut c,
        marker,
        &["auth:{q2}:job:8"],
        &["GET", "auth:{q2}:job:8"],
        true,
    )
    .await;
    assert_eq!(d, Decision::Ask);
    assert_eq!(
        script_decision(&mut c, marker, &[q2]).await,
        Some(Decision::Ran)
    );
    // A command the guard sends to the target (its key absent here) marks its group: the
    // target may hold a key of it now.
    let (d, _) = guarded(
        &mut c,
        marker,
        &["auth:{q2}:job:9"],
        &["SET", "auth:{q2}:job:9", "x"],
    )
    .await;
    assert_eq!(d, Decision::Ask);
    assert_eq!(
        script_decision(&mut c, marker, &[q2]).await,
        Some(Decision::TryAgain)
    );

    // A key of the script's in transit: wait.
    set(&mut c, "redisfleet:tomb:auth:{q3}:id", "v").await;
    assert_eq!(
        script_decision(&mut c, marker, &[q3]).await,
        Some(Decision::Busy)
    );
    let () = redis::cmd("DEL")
        .arg("redisfleet:tomb:auth:{q3}:id")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        script_decision(&mut c, marker, &[q3]).await,
        Some(Decision::Ran)
    );

    // The copy is over (the sweep runs): an untouched group counts as moving.
    set_state(&m, &mut c, &all, names::GROUPS_CLOSING, names::GROUP_MOVED).await;
    assert_eq!(
        script_decision(&mut c, marker, &[q3]).await,
        Some(Decision::TryAgain)
    );
    // The sweep found the source empty: every group moved.
    set_state(&m, &mut c, &all, names::GROUP_MOVED, "").await;
    assert_eq!(
        script_decision(&mut c, marker, &[q3]).await,
        Some(Decision::Ask)
    );
    // `closing` never takes the place of `moved`.
    set_state(&m, &mut c, &all, names::GROUPS_CLOSING, names::GROUP_MOVED).await;
    assert_eq!(
        script_decision(&mut c, marker, &[q2]).await,
        Some(Decision::Ask)
    );

    // A stale Job attempt changes no state.
    let old = mover(names::mover_token(1, 0));
    assert_eq!(
        old.set_group_states(
            &mut c,
            std::slice::from_ref(&all),
            names::GROUPS_CLOSING,
            ""
        )
        .await,
        Err(MoveError::Fenced)
    );

    // A move into a range its target serves already never runs a script on the source (it
    // could write a key the target holds, and the move keeps the target's copy): its groups
    // move whole first, even while the plan's own state is `open` (untouched groups would run
    // on the source elsewhere), and it runs on the target.
    let legacy = "redisfleet:importing:shop/shop:2:auth:0-16383";
    set(&mut c, legacy, "5:target-serves").await;
    set(&mut c, "auth:{q9}:id", "1").await;
    let () = redis::cmd("DEL")
        .arg(URGENT_GROUPS)
        .query_async(&mut c)
        .await
        .unwrap();
    set(&mut c, &all, names::GROUPS_OPEN).await;
    for key in ["auth:{q9}:id", "auth:{q9}:absent"] {
        assert_eq!(
            script_decision(&mut c, legacy, &[key]).await,
            Some(Decision::TryAgain),
            "{key}"
        );
    }
    let asked: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(URGENT_GROUPS)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(asked, vec![group("auth:{q9}:id").to_vec(); 2]);
    set(
        &mut c,
        std::str::from_utf8(&group("auth:{q9}:id")).unwrap(),
        "moved",
    )
    .await;
    assert_eq!(
        script_decision(&mut c, legacy, &["auth:{q9}:absent"]).await,
        Some(Decision::Ask)
    );
}

fn mover(token: u64) -> Mover {
    Mover {
        policy: POLICY.to_owned(),
        token,
    }
}

/// A source and a target, a connection to each, and a mover of attempt `token` that claimed
/// both.
/// (Bind `_servers` where it is taken apart: the servers stop when it is dropped.)
struct Pair {
    _servers: (RedisServer, RedisServer),
    s: MultiplexedConnection,
    t: MultiplexedConnection,
    m: Mover,
}

async fn claimed_pair(token: u64) -> Pair {
    let (source, target) = (
        RedisServer::start(RedisOptions::default()),
        RedisServer::start(RedisOptions::default()),
    );
    let (mut s, mut t) = (conn(&source).await, conn(&target).await);
    let m = mover(token);
    m.claim(&mut s).await.unwrap();
    m.claim(&mut t).await.unwrap();
    Pair {
        _servers: (source, target),
        s,
        t,
        m,
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

#[tokio::test]
async fn a_move_takes_restores_and_finishes_and_keeps_the_expiry() {
    let Pair {
        _servers,
        mut s,
        mut t,
        m,
    } = claimed_pair(names::mover_token(5, 1)).await;
    let _: () = redis::cmd("SET")
        .arg("k1")
        .arg("v1")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut s)
        .await
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("k2")
        .arg("a")
        .arg("b")
        .query_async(&mut s)
        .await
        .unwrap();

    let taken = m
        .take(
            &mut s,
            &[b("k1"), b("k2"), b("gone")],
            "redisfleet:group:test:1:",
            8 << 20,
            0,
        )
        .await
        .unwrap();
    assert_eq!(taken[2], Taken::None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut restores = Vec::new();
    for (key, t) in ["k1", "k2"].iter().zip(&taken) {
        let Taken::Value { dump, expire_at } = t else {
            panic!("{t:?}")
        };
        assert!(
            *expire_at == -1 || (expire_at - now - 60_000).abs() < 1_000,
            "{expire_at}"
        );
        restores.push(Restore {
            key: b(key),
            expire_at: u64::try_from(*expire_at).unwrap_or(0),
            dump: dump.clone(),
        });
    }
    // While in transit, the keys are absent on the source and their tombstones exist.
    let exists: i64 = redis::cmd("EXISTS")
        .arg("k1")
        .arg("redisfleet:tomb:k1")
        .query_async(&mut s)
        .await
        .unwrap();
    assert_eq!(exists, 1);
    // The target already holds a newer k2: it stays.
    let _: () = redis::cmd("RPUSH")
        .arg("k2")
        .arg("newer")
        .query_async(&mut t)
        .await
        .unwrap();
    let done = m.restore(&mut t, &restores).await.unwrap();
    assert_eq!(done, vec![Restored::Done, Restored::Present]);
    m.finish(&mut s, &[b("k1"), b("k2")]).await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut s)
        .await
        .unwrap();
    let left: Vec<&String> = left
        .iter()
        .filter(|k| !k.starts_with("redisfleet:group:"))
        .collect();
    assert_eq!(
        left,
        vec![&names::mover(POLICY)],
        "only the mover token (and the groups' states) is left on the source"
    );
    let at_target: i64 = redis::cmd("PEXPIRETIME")
        .arg("k1")
        .query_async(&mut t)
        .await
        .unwrap();
    let Taken::Value { expire_at, .. } = &taken[0] else {
        panic!()
    };
    assert_eq!(
        *expire_at, at_target,
        "the expiry moves as an absolute time"
    );
    let k2: Vec<String> = redis::cmd("LRANGE")
        .arg("k2")
        .arg(0)
        .arg(-1)
        .query_async(&mut t)
        .await
        .unwrap();
    assert_eq!(k2, vec!["newer"]);
}

#[tokio::test]
async fn a_replaced_mover_can_no_longer_restore_what_it_took() {
    // A Job attempt takes a key and stalls; a newer attempt finishes the key from its
    // tombstone; the application deletes it on the target; the stalled attempt wakes up and
    // tries to RESTORE its old copy. The mover token must refuse it.
    let Pair {
        mut s,
        mut t,
        m: old,
        _servers,
    } = claimed_pair(names::mover_token(9, 1)).await;
    let _: () = redis::cmd("SET")
        .arg("session:1")
        .arg("alive")
        .query_async(&mut s)
        .await
        .unwrap();
    let taken = old
        .take(&mut s, &[b("session:1")], "redisfleet:group:test:1:", 0, 0)
        .await
        .unwrap();
    let Taken::Value { dump, .. } = taken[0].clone() else {
        panic!()
    };

    let new = mover(names::mover_token(9, 2));
    new.claim(&mut s).await.unwrap();
    new.claim(&mut t).await.unwrap();
    let again = new
        .take(&mut s, &[b("session:1")], "redisfleet:group:test:1:", 0, 0)
        .await
        .unwrap();
    let Taken::Value { dump: d2, .. } = again[0].clone() else {
        panic!("the tombstone is taken over: {again:?}")
    };
    assert_eq!(
        new.restore(
            &mut t,
            &[Restore {
                key: b("session:1"),
                expire_at: 0,
                dump: d2
            }]
        )
        .await
        .unwrap(),
        vec![Restored::Done]
    );
    new.finish(&mut s, &[b("session:1")]).await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg("session:1")
        .query_async(&mut t)
        .await
        .unwrap();

    let late = old
        .restore(
            &mut t,
            &[Restore {
                key: b("session:1"),
                expire_at: 0,
                dump,
            }],
        )
        .await;
    assert_eq!(late, Err(MoveError::Fenced));
    assert_eq!(old.claim(&mut s).await, Err(MoveError::Fenced));
    assert_eq!(
        old.finish(&mut s, &[b("session:1")]).await,
        Err(MoveError::Fenced)
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg("session:1")
        .query_async(&mut t)
        .await
        .unwrap();
    assert_eq!(exists, 0, "the logout stays a logout");
}

#[tokio::test]
async fn raising_a_fence_closes_older_sidecar_connections_and_later_handshakes_see_it() {
    let server = RedisServer::start(RedisOptions::default());
    let mut admin = conn(&server).await;
    // Two "sidecar" connections named as the sidecar names them.
    let client = server.client();
    let mut stale = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(names::connection_name(POLICY, "a", 16))
        .query_async(&mut stale)
        .await
        .unwrap();
    let mut fresh = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(names::connection_name(POLICY, "b", 17))
        .query_async(&mut fresh)
        .await
        .unwrap();
    let mut other = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(names::connection_name("other/p", "c", 1))
        .query_async(&mut other)
        .await
        .unwrap();

    let fences = fence::raise(&mut admin, POLICY, &[("primary".to_owned(), 17)])
        .await
        .unwrap();
    assert_eq!(fences.get("primary"), Some(&17));
    // Never lowered.
    let fences = fence::raise(&mut admin, POLICY, &[("primary".to_owned(), 3)])
        .await
        .unwrap();
    assert_eq!(fences.get("primary"), Some(&17));
    let closed = fence::close_older_connections(&mut admin, POLICY, 17)
        .await
        .unwrap();
    assert_eq!(closed, 1);
    assert!(
        redis::cmd("PING")
            .query_async::<String>(&mut stale)
            .await
            .is_err(),
        "v16 is closed"
    );
    assert_eq!(
        redis::cmd("PING")
            .query_async::<String>(&mut fresh)
            .await
            .unwrap(),
        "PONG"
    );
    assert_eq!(
        redis::cmd("PING")
            .query_async::<String>(&mut other)
            .await
            .unwrap(),
        "PONG"
    );

    // A heartbeat answers with the fences, and is read back per policy.
    let reply: redis::Value = {
        let args = heartbeat::write_command(POLICY, "b", 17, heartbeat::Latency::Nothing);
        let mut cmd = redis::cmd("EVAL");
        for a in &args[1..] {
            cmd.arg(a.as_ref());
        }
        cmd.query_async(&mut fresh).await.unwrap()
    };
    let frame = redis_fleet::redis::protocol::mover::value_to_frame(&reply);
    let seen = heartbeat::parse_write_reply(&frame).expect("a heartbeat reply");
    assert_eq!(seen.get("primary"), Some(&17));
    let live = heartbeat::read(&mut admin, POLICY).await.unwrap();
    assert_eq!(live.get("b"), Some(&17));
    assert!(
        heartbeat::read(&mut admin, "other/p")
            .await
            .unwrap()
            .is_empty()
    );

    // A sidecar of a release before features were reported: its heartbeat (that release's
    // script: live and versions, no features) makes it one without the `groups` feature.
    support::sidecar::beat_as_older_release(&mut admin, POLICY, "a-older", 17).await;
    assert_eq!(
        heartbeat::live_without(&mut admin, POLICY, heartbeat::GROUPS_FEATURE)
            .await
            .unwrap(),
        vec!["a-older".to_owned()],
        "b reports the feature, a-older does not"
    );
    assert_eq!(
        heartbeat::live_without(&mut admin, POLICY, "no-such-feature")
            .await
            .unwrap(),
        vec!["a-older".to_owned(), "b".to_owned()]
    );
    // The pod rolled back to the older release keeps its name: its beat moves the heartbeat
    // on, not the features a newer beat left, and it reads as older again.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    support::sidecar::beat_as_older_release(&mut admin, POLICY, "b", 17).await;
    assert_eq!(
        heartbeat::live_without(&mut admin, POLICY, heartbeat::GROUPS_FEATURE)
            .await
            .unwrap(),
        vec!["a-older".to_owned(), "b".to_owned()]
    );

    // The features of an id no longer live (an older release's script dropped it from the
    // sorted set only) go with a later beat.
    let swept = "sweep/p";
    let () = redis::cmd("HSET")
        .arg(names::sidecar_features(swept))
        .arg("gone")
        .arg("groups 1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let args = heartbeat::write_command(swept, "here", 3, heartbeat::Latency::Nothing);
    let mut cmd = redis::cmd("EVAL");
    for a in &args[1..] {
        cmd.arg(a.as_ref());
    }
    let _: redis::Value = cmd.query_async(&mut admin).await.unwrap();
    let left: Vec<String> = redis::cmd("HKEYS")
        .arg(names::sidecar_features(swept))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, vec!["here".to_owned()]);
}

/// Fills `server` past its `maxmemory` (writes until Redis answers OOM).
async fn fill_past_maxmemory(c: &mut MultiplexedConnection) {
    let value = "x".repeat(64 << 10);
    for i in 0.. {
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("fill:{i}"))
            .arg(&value)
            .query_async(c)
            .await;
        if let Err(e) = r {
            assert_eq!(e.code(), Some("OOM"), "{e}");
            return;
        }
        assert!(i < 10_000, "never reached maxmemory");
    }
}

#[tokio::test]
async fn a_full_source_can_still_be_emptied_and_a_full_target_takes_nothing() {
    // Chaos seed 4 (180 s): the failover fallback filled past maxmemory, and every attempt of
    // the failback that would have emptied it failed on Redis's OOM refusal of the mover token
    // (then of the fences and the importing marker); sidecars' heartbeats were refused there
    // too. The protocol's own small writes must run on a full instance; the application's
    // writes and the copy's RESTOREs must not.
    let opts = RedisOptions {
        maxmemory: 4 << 20,
        ..RedisOptions::default()
    };
    let (source, target) = (RedisServer::start(opts.clone()), RedisServer::start(opts));
    let (mut s, mut t) = (conn(&source).await, conn(&target).await);
    let _: () = redis::cmd("SET")
        .arg("user:1")
        .arg("v1")
        .query_async(&mut s)
        .await
        .unwrap();
    fill_past_maxmemory(&mut s).await;
    fill_past_maxmemory(&mut t).await;

    // The source: claim, fences, heartbeat, importing marker, the guard's urgent queue, take.
    let m = mover(names::mover_token(9, 1));
    m.claim(&mut s)
        .await
        .expect("the mover token on a full source");
    fence::raise(&mut s, POLICY, &[("source".to_owned(), 12)])
        .await
        .expect("a fence on a full instance");
    let hb = heartbeat::write_command(POLICY, "sidecar-a", 12, heartbeat::Latency::Nothing);
    let mut call = redis::cmd("EVAL");
    for a in &hb[1..] {
        call.arg(a.as_ref());
    }
    let reply: redis::Value = call
        .query_async(&mut s)
        .await
        .expect("a heartbeat on a full instance");
    assert!(
        matches!(reply, redis::Value::Array(ref a) if a.len() == 2),
        "{reply:?}"
    );
    let marker = "redisfleet:importing:shop/shop:12:user:0-16383";
    m.set_marker(&mut s, marker, true, false)
        .await
        .expect("the importing marker on a full source");
    // One key present, one absent: the guard queues the present one for the Job.
    let (d, _) = guarded(
        &mut s,
        marker,
        &["user:1", "user:2"],
        &["MSET", "user:1", "a", "user:2", "b"],
    )
    .await;
    assert_eq!(d, Decision::TryAgain, "the urgent queue on a full source");
    let queued: i64 = redis::cmd("LLEN")
        .arg(names::urgent(POLICY))
        .query_async(&mut s)
        .await
        .unwrap();
    assert_eq!(queued, 1);
    let taken = m
        .take(
            &mut s,
            &[b("user:1")],
            "redisfleet:group:test:1:",
            8 << 20,
            0,
        )
        .await
        .unwrap();
    let Taken::Value { dump, .. } = &taken[0] else {
        panic!("{taken:?}")
    };

    // The application's writes on a full instance stay refused, through the guard too.
    let urgent = names::urgent(POLICY);
    let args = guard::guard_command(
        range(marker, &urgent),
        &[b("fill:0")],
        &[vec![b("SET"), b("fill:0"), b("y")]],
        true,
        false,
        guard::Seen::Unknown,
    );
    let mut call = redis::cmd(std::str::from_utf8(&args[0]).unwrap());
    for a in &args[1..] {
        call.arg(a.as_ref());
    }
    let through_guard: redis::RedisResult<redis::Value> = call.query_async(&mut s).await;
    assert_eq!(through_guard.unwrap_err().code(), Some("OOM"));
    let plain: redis::RedisResult<()> = redis::cmd("SET")
        .arg("user:3")
        .arg("c")
        .query_async(&mut s)
        .await;
    assert_eq!(plain.unwrap_err().code(), Some("OOM"));

    // The full target: its token is claimed, but a RESTORE is refused.
    m.claim(&mut t)
        .await
        .expect("the mover token on a full target");
    let restored = m
        .restore(
            &mut t,
            &[Restore {
                key: b("user:1"),
                expire_at: 0,
                dump: dump.clone(),
            }],
        )
        .await;
    assert!(
        !matches!(restored.as_deref(), Ok([Restored::Done])),
        "a full target must not take a key: {restored:?}"
    );
    let there: i64 = redis::cmd("EXISTS")
        .arg("user:1")
        .query_async(&mut t)
        .await
        .unwrap();
    assert_eq!(there, 0);
}

#[tokio::test]
async fn a_tombstone_beside_a_live_key_is_stale_and_the_live_key_moves() {
    // Chaos seed 7 (180 s): a move's target died mid-copy; its range went back to the source,
    // where the key in transit stayed as a tombstone. The application wrote the key again
    // (plain commands: no migration, no guard), and a later plan took the old tombstone
    // first: it reached the target and the live key's newer value was kept out by it.
    use redis::AsyncCommands;
    let Pair {
        _servers,
        mut s,
        mut t,
        m,
    } = claimed_pair(names::mover_token(7, 1)).await;
    let tomb = names::tomb(b"user:k");
    let _: () = s.set(tomb.as_ref(), "old").await.unwrap();
    let _: () = s.set("user:k", "new").await.unwrap();
    let taken = m
        .take(
            &mut s,
            &[b("user:k")],
            "redisfleet:group:test:1:",
            8 << 20,
            0,
        )
        .await
        .unwrap();
    let Taken::Value { dump, .. } = &taken[0] else {
        panic!("{taken:?}");
    };
    let _: () = redis::cmd("RESTORE")
        .arg("check")
        .arg(0)
        .arg(dump.as_ref())
        .query_async(&mut t)
        .await
        .unwrap();
    let moved: String = t.get("check").await.unwrap();
    assert_eq!(moved, "new", "the stale tombstone was taken");
    // The stale tombstone is gone; the live key is in transit now.
    let left: Option<String> = s.get("user:k").await.unwrap();
    assert_eq!(left, None);
}

#[tokio::test]
async fn a_take_finds_sizes_and_leaves_for_later_each_kind_of_key_as_it_should() {
    // Every branch of the take script in one call with a small budget: a key that moves, a
    // key beside a stale tombstone and a tombstone alone both left for later (the budget is
    // spent), a key that is nowhere; then the same two keys again with no budget.
    use redis::AsyncCommands;
    let source = RedisServer::start(RedisOptions::default());
    let mut s = conn(&source).await;
    let m = mover(names::mover_token(9, 1));
    m.claim(&mut s).await.unwrap();
    let big = vec![b'a'; 100 * 1024];
    let _: () = s.set("user:a", &big).await.unwrap();
    let _: () = s.set(names::tomb(b"user:b").as_ref(), "old").await.unwrap();
    let _: () = s.set("user:b", "new").await.unwrap();
    let _: () = s
        .set_ex(names::tomb(b"user:c").as_ref(), "in transit", 600)
        .await
        .unwrap();
    let keys = [b("user:a"), b("user:b"), b("user:c"), b("user:d")];
    let group = "redisfleet:group:test:1:";
    let taken = m
        .take(&mut s, &keys, group, 8 << 20, 64 * 1024)
        .await
        .unwrap();
    assert!(
        matches!(taken[0], Taken::Value { expire_at: -1, .. }),
        "{:?}",
        taken[0]
    );
    assert_eq!(taken[1..], [Taken::Later, Taken::Later, Taken::None]);
    // user:a is in transit; user:b is where it was, its stale tombstone gone; user:c still
    // waits in its tombstone.
    let a: Option<Vec<u8>> = s.get("user:a").await.unwrap();
    let b_now: Option<String> = s.get("user:b").await.unwrap();
    let b_tomb: Option<String> = s.get(names::tomb(b"user:b").as_ref()).await.unwrap();
    let c_tomb: Option<String> = s.get(names::tomb(b"user:c").as_ref()).await.unwrap();
    assert_eq!(a, None);
    assert_eq!(b_now.as_deref(), Some("new"));
    assert_eq!(
        b_tomb, None,
        "the stale tombstone beside a key left for later stays"
    );
    assert_eq!(c_tomb.as_deref(), Some("in transit"));

    let taken = m
        .take(&mut s, &keys[1..3], group, 8 << 20, 0)
        .await
        .unwrap();
    let target = RedisServer::start(RedisOptions::default());
    let mut t = conn(&target).await;
    for (name, taken) in ["b", "c"].iter().zip(&taken) {
        let Taken::Value { dump, .. } = taken else {
            panic!("{taken:?}");
        };
        let () = redis::cmd("RESTORE")
            .arg(*name)
            .arg(0)
            .arg(dump.as_ref())
            .query_async(&mut t)
            .await
            .unwrap();
    }
    let (b_moved, c_moved): (String, String) =
        (t.get("b").await.unwrap(), t.get("c").await.unwrap());
    assert_eq!((b_moved.as_str(), c_moved.as_str()), ("new", "in transit"));
    assert!(matches!(taken[0], Taken::Value { expire_at: -1, .. }));
    assert!(
        matches!(taken[1], Taken::Value { expire_at, .. } if expire_at > 0),
        "the tombstone's expiry moves with it: {:?}",
        taken[1]
    );
}

#[tokio::test]
async fn a_key_whose_time_ran_out_before_its_take_is_nowhere_and_the_rest_of_the_call_moves() {
    // Redis removes an expired key when something looks it up, or when its expiry cycle finds
    // it: until then some commands (MEMORY USAGE) still see it. A take that sized such a key
    // and then could not rename it failed whole, the keys it had taken before stuck in
    // transit. Keys whose TTL runs out between a scan page and their take are common in a
    // cache. The expiry cycle is off here, so the expired keys are surely still stored.
    use redis::AsyncCommands;
    let source = RedisServer::start(RedisOptions {
        extra_args: vec!["--enable-debug-command".into(), "yes".into()],
        ..Default::default()
    });
    let mut s = conn(&source).await;
    let () = redis::cmd("DEBUG")
        .arg("SET-ACTIVE-EXPIRE")
        .arg(0)
        .query_async(&mut s)
        .await
        .unwrap();
    let m = mover(names::mover_token(11, 1));
    m.claim(&mut s).await.unwrap();
    let _: () = s.set("user:live", "v").await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("user:gone")
        .arg("x")
        .arg("PX")
        .arg(1)
        .query_async(&mut s)
        .await
        .unwrap();
    // A value whose time ran out while it was in transit.
    let _: () = redis::cmd("SET")
        .arg(names::tomb(b"user:was-moving").as_ref())
        .arg("y")
        .arg("PX")
        .arg(1)
        .query_async(&mut s)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let keys = [b("user:live"), b("user:gone"), b("user:was-moving")];
    let taken = m
        .take(&mut s, &keys, "redisfleet:group:test:1:", 8 << 20, 0)
        .await
        .expect("a take with expired keys among its own");
    assert!(
        matches!(taken[0], Taken::Value { expire_at: -1, .. }),
        "{taken:?}"
    );
    assert_eq!(taken[1..], [Taken::None, Taken::None]);
    let in_transit: bool = s.exists(names::tomb(b"user:live").as_ref()).await.unwrap();
    assert!(in_transit);
}

#[tokio::test]
async fn a_full_target_still_answers_that_a_key_is_there() {
    // A full target refuses RESTORE for being full before it looks at the key: a key an
    // earlier attempt restored is still "present", so the move of it can finish.
    use redis::AsyncCommands;
    let Pair {
        _servers,
        mut s,
        mut t,
        m,
    } = claimed_pair(names::mover_token(12, 1)).await;
    for k in ["user:there", "user:new"] {
        let _: () = s.set(k, "v").await.unwrap();
    }
    let taken = m
        .take(
            &mut s,
            &[b("user:there"), b("user:new")],
            "redisfleet:group:test:1:",
            8 << 20,
            0,
        )
        .await
        .unwrap();
    let restores: Vec<Restore> = taken
        .iter()
        .zip(["user:there", "user:new"])
        .map(|(t, k)| {
            let Taken::Value { dump, .. } = t else {
                panic!("{t:?}");
            };
            Restore {
                key: b(k),
                expire_at: 0,
                dump: dump.clone(),
            }
        })
        .collect();
    assert_eq!(
        m.restore(&mut t, &restores[..1]).await.unwrap(),
        [Restored::Done]
    );
    for (name, value) in [("maxmemory", "1"), ("maxmemory-policy", "noeviction")] {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut t)
            .await
            .unwrap();
    }
    let answers = m.restore(&mut t, &restores).await.unwrap();
    assert_eq!(answers[0], Restored::Present, "{answers:?}");
    assert!(
        matches!(&answers[1], Restored::Failed(e) if e.contains("OOM")),
        "{answers:?}"
    );
}

#[tokio::test]
async fn a_move_given_back_renames_its_keys_in_transit_back_and_fences_its_job_off() {
    // A move's target died with keys in transit: the operator gives them back to the source
    // before the range returns there. A tombstone whose key is absent is the key's last
    // acknowledged value; one beside its key is stale. The Job's attempt takes nothing after.
    let source = RedisServer::start(RedisOptions::default());
    let mut s = conn(&source).await;
    let marker = "redisfleet:importing:shop/shop:7:auth:0-16383";
    let job = mover(names::mover_token(7, 1));
    job.claim(&mut s).await.unwrap();
    for (k, v) in [("auth:1", "one"), ("auth:2", "two"), ("auth:3", "three")] {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(v)
            .arg("PX")
            .arg(600_000)
            .query_async(&mut s)
            .await
            .unwrap();
    }
    // Not importing: nothing is in transit, nothing goes back, the token is raised anyway.
    let operator = mover(names::mover_token(7, 2));
    assert_eq!(operator.give_back(&mut s, marker, &[]).await, Ok(None));
    assert_eq!(job.claim(&mut s).await, Err(MoveError::Fenced));

    let job = mover(names::mover_token(7, 3));
    job.claim(&mut s).await.unwrap();
    job.set_marker(&mut s, marker, true, false).await.unwrap();
    let taken = job
        .take(
            &mut s,
            &[b("auth:1"), b("auth:2")],
            "redisfleet:group:test:1:",
            8 << 20,
            0,
        )
        .await
        .unwrap();
    assert!(matches!(taken[0], Taken::Value { .. }), "{taken:?}");
    // auth:3 has a stale tombstone beside it (left by an earlier move that ended).
    let _: () = redis::cmd("SET")
        .arg("redisfleet:tomb:auth:3")
        .arg("old")
        .query_async(&mut s)
        .await
        .unwrap();

    let operator = mover(names::mover_token(7, 4));
    let back = operator
        .give_back(
            &mut s,
            marker,
            &[b("auth:1"), b("auth:2"), b("auth:3"), b("auth:4")],
        )
        .await
        .unwrap();
    assert_eq!(back, Some(2));
    for (k, v) in [("auth:1", "one"), ("auth:2", "two"), ("auth:3", "three")] {
        let got: Option<String> = redis::cmd("GET").arg(k).query_async(&mut s).await.unwrap();
        assert_eq!(got.as_deref(), Some(v), "{k}");
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut s).await.unwrap();
        assert!(ttl > 0 && ttl <= 600_000, "{k} keeps its expiry: {ttl}");
    }
    let tombs: Vec<String> = redis::cmd("KEYS")
        .arg("redisfleet:tomb:*")
        .query_async(&mut s)
        .await
        .unwrap();
    assert!(tombs.is_empty(), "{tombs:?}");
    // The attempt that had the keys in transit can no longer take or finish anything.
    assert_eq!(
        job.take(
            &mut s,
            &[b("auth:1")],
            "redisfleet:group:test:1:",
            8 << 20,
            0
        )
        .await,
        Err(MoveError::Fenced)
    );
    // A move into a range its target served already gives nothing back to its draining source.
    let drained = "redisfleet:importing:shop/shop:7:auth:0-99";
    let job = mover(names::mover_token(7, 5));
    job.claim(&mut s).await.unwrap();
    job.set_marker(&mut s, drained, true, true).await.unwrap();
    job.take(
        &mut s,
        &[b("auth:1")],
        "redisfleet:group:test:1:",
        8 << 20,
        0,
    )
    .await
    .unwrap();
    let operator = mover(names::mover_token(7, 6));
    assert_eq!(
        operator.give_back(&mut s, drained, &[b("auth:1")]).await,
        Ok(None)
    );
    let tomb: i64 = redis::cmd("EXISTS")
        .arg("redisfleet:tomb:auth:1")
        .query_async(&mut s)
        .await
        .unwrap();
    assert_eq!(tomb, 1);
}

/// A value copied piece by piece is placed only whole: an assembly that lost pieces on the
/// target (it evicted or expired the temporary key mid-way, and the next piece started it
/// again) is dropped, never renamed into place, where before it became the key's value and
/// its tombstone on the source was deleted.
#[tokio::test]
async fn an_assembly_that_lost_pieces_is_never_placed() {
    use redis::AsyncCommands;
    use redis_fleet::redis::protocol::mover::Placed;
    let target = RedisServer::start(RedisOptions::default());
    let mut c = conn(&target).await;
    let m = mover(names::mover_token(1, 1));
    m.claim(&mut c).await.unwrap();
    let temp = names::restore_temp(m.token, b"auth:big");
    // The source's list has 3 000 items; the first 1 000 were lost with the key, and the
    // assembly started again from the second piece.
    let () = redis::cmd("RPUSH")
        .arg(temp.as_ref())
        .arg((1_000..3_000).collect::<Vec<i32>>())
        .query_async(&mut c)
        .await
        .unwrap();
    let placed = m
        .place(&mut c, &temp, b"auth:big", true, "LLEN", 3_000)
        .await
        .unwrap();
    assert_eq!(placed, Placed::Incomplete);
    let exists: (bool, bool) = redis::pipe()
        .exists(temp.as_ref())
        .exists("auth:big")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        exists,
        (false, false),
        "the partial assembly is gone, nothing placed"
    );
    // Nothing assembled at all.
    assert_eq!(
        m.place(&mut c, &temp, b"auth:big", true, "LLEN", 3_000)
            .await
            .unwrap(),
        Placed::Missing
    );
    // Whole: placed.
    let () = redis::cmd("RPUSH")
        .arg(temp.as_ref())
        .arg((0..3_000).collect::<Vec<i32>>())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        m.place(&mut c, &temp, b"auth:big", true, "LLEN", 3_000)
            .await
            .unwrap(),
        Placed::Placed
    );
    let len: i64 = c.llen("auth:big").await.unwrap();
    assert_eq!(len, 3_000);
    // Written on the target meanwhile: the target's value is newer, the assembly is dropped.
    let () = redis::cmd("APPEND")
        .arg(temp.as_ref())
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        m.place(&mut c, &temp, b"auth:big", true, "STRLEN", 1)
            .await
            .unwrap(),
        Placed::TargetNewer
    );
    let left: bool = c.exists(temp.as_ref()).await.unwrap();
    assert!(!left);
}
