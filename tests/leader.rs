//! Leader election against the real kube-apiserver: several real `redis-fleet-operator`
//! processes for one namespace, one Lease; only the holder writes, a killed leader is replaced
//! within the lease duration and a terminated one hands over at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use redis_fleet::api::redis_instance::{InstancePhase, RedisInstance};
use serde_json::json;
use support::operator::Operator;
use support::{ControlPlane, RedisOptions, RedisServer, wait_for};

const LEASE: &str = "redis-fleet-operator";
const LEASE_DURATION: Duration = Duration::from_secs(3);

fn start(cp: &ControlPlane, ns: &str, name: &str) -> Operator {
    Operator::start_with(
        cp,
        ns,
        &[
            "--leader-election",
            "--lease-namespace",
            ns,
            "--lease-duration",
            "3s",
            "--instance-name",
            name,
        ],
    )
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

fn phase(ri: &RedisInstance) -> Option<InstancePhase> {
    ri.status.as_ref().and_then(|s| s.phase)
}

/// The sum of a metric's samples (0 when it has none).
fn metric(op: &Operator, name: &str) -> f64 {
    op.metrics()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls the operator's `/metrics` until `metric` has `value`.
async fn wait_metric(op: &Operator, name: &str, value: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(op, name) != value {
        assert!(
            Instant::now() < deadline,
            "{what}: {name} is {} not {value}\n{}",
            metric(op, name),
            op.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `reportingInstance` of every Event in the namespace, with its reason.
async fn event_reporters(events: &Api<Event>) -> Vec<(String, String)> {
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.reporting_instance.unwrap_or_default(),
                e.reason.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "leader").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let instances: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let mut server = RedisServer::start(RedisOptions::with_maxmemory(30 * 1024 * 1024));

    // A starts first and takes the Lease; B then stands by.
    let mut a = start(cp, &ns, "leader-a");
    wait_for(
        &leases,
        LEASE,
        Duration::from_secs(10),
        "leader-a holds the Lease",
        |l| holder(l) == Some("leader-a"),
    )
    .await;
    let b = start(cp, &ns, "leader-b");
    wait_metric(&b, "redisfleet_leader", 0.0, "the standby reports it").await;

    let ri: RedisInstance = serde_json::from_value(json!({
        "apiVersion": "redisfleet.io/v1alpha1",
        "kind": "RedisInstance",
        "metadata": {"name": "primary"},
        "spec": {
            "external": {"host": "127.0.0.1", "port": server.port},
            "health": {"interval": "1s", "timeout": "500ms", "failureThreshold": 1, "recoveryThreshold": 1},
        },
    }))
    .unwrap();
    instances.create(&PostParams::default(), &ri).await.unwrap();
    wait_for(
        &instances,
        "primary",
        Duration::from_secs(15),
        "phase Ready",
        |ri| phase(ri) == Some(InstancePhase::Ready),
    )
    .await;

    // Exactly one holder; only it reconciles and records Events.
    let lease = leases.get(LEASE).await.unwrap();
    assert_eq!(holder(&lease), Some("leader-a"));
    assert_eq!(lease.spec.as_ref().unwrap().lease_duration_seconds, Some(3));
    assert_eq!(metric(&a, "redisfleet_leader"), 1.0);
    assert_eq!(metric(&b, "redisfleet_leader"), 0.0);
    assert!(metric(&a, "redisfleet_reconcile_total") > 0.0);
    // Give the standby a few probe intervals in which it could misbehave.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        metric(&b, "redisfleet_reconcile_total"),
        0.0,
        "the standby reconciled\n{}",
        b.log_tail(30)
    );
    let reporters = event_reporters(&events).await;
    assert!(!reporters.is_empty(), "the leader records Events");
    assert!(
        reporters.iter().all(|(who, _)| who == "leader-a"),
        "only the leader records Events: {reporters:?}"
    );
    assert!(
        b.logs()
            .lines()
            .any(|l| l.contains("standing by") && l.contains("leader-a")),
        "the standby says it waits\n{}",
        b.log_tail(30)
    );
    assert!(!b.logs().contains("status written"), "{}", b.log_tail(30));

    // kill -9 the leader and stop Redis: only B can notice and write Unreachable.
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &a.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.stop();
    wait_for(
        &leases,
        LEASE,
        LEASE_DURATION + Duration::from_secs(3),
        "leader-b takes the Lease",
        |l| holder(l) == Some("leader-b"),
    )
    .await;
    let took_over = killed.elapsed();
    wait_for(
        &instances,
        "primary",
        LEASE_DURATION + Duration::from_secs(5),
        "phase Unreachable written by the new leader",
        |ri| phase(ri) == Some(InstancePhase::Unreachable),
    )
    .await;
    let resumed = killed.elapsed();
    println!(
        "kill -9 of the leader: Lease taken over after {took_over:?}, status written by the new leader after {resumed:?} (lease duration {LEASE_DURATION:?})"
    );
    assert!(
        took_over <= LEASE_DURATION + Duration::from_secs(2),
        "takeover after {took_over:?}: more than the lease duration, a standby poll (500 ms) \
         and kube-lease-manager's jitter before taking an expired Lease (up to 1 s)"
    );
    assert!(
        resumed <= LEASE_DURATION + Duration::from_secs(3),
        "status resumed after {resumed:?}"
    );
    assert!(!a.is_running());
    wait_metric(&b, "redisfleet_leader", 1.0, "the new leader reports it").await;
    assert!(metric(&b, "redisfleet_reconcile_total") > 0.0);
    // The Event is posted right after the status write that changed the phase: poll for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reporters = event_reporters(&events).await;
        if reporters
            .iter()
            .any(|(who, why)| who == "leader-b" && why == "Unreachable")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader records the Unreachable Event: {reporters:?}\n{}",
            b.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A graceful stop (SIGTERM) releases the Lease: C takes over at once, not after expiry.
    let c = start(cp, &ns, "leader-c");
    wait_metric(&c, "redisfleet_leader", 0.0, "the new standby reports it").await;
    let terminated = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || {
        let mut b = b;
        b.terminate(Duration::from_secs(10));
        (b, terminated.elapsed())
    });
    wait_for(
        &leases,
        LEASE,
        LEASE_DURATION,
        "leader-c takes the released Lease",
        |l| holder(l) == Some("leader-c"),
    )
    .await;
    let handed_over = terminated.elapsed();
    let (mut b, exited) = stopping.await.unwrap();
    println!(
        "SIGTERM of the leader: exited after {exited:?}, Lease taken over after {handed_over:?}"
    );
    assert!(!b.is_running());
    assert!(
        b.logs().contains("released the Lease"),
        "{}",
        b.log_tail(20)
    );
    assert!(
        handed_over < Duration::from_secs(2),
        "handover after SIGTERM took {handed_over:?}: the Lease was not released"
    );

    // C leads: Redis back, C writes Ready.
    server.restart();
    wait_for(
        &instances,
        "primary",
        Duration::from_secs(10),
        "phase Ready written by leader-c",
        |ri| phase(ri) == Some(InstancePhase::Ready),
    )
    .await;
    assert_eq!(metric(&c, "redisfleet_leader"), 1.0);
    assert!(
        event_reporters(&events)
            .await
            .iter()
            .any(|(who, _)| who == "leader-c"),
        "leader-c records Events"
    );

    // Someone else in the Lease: the leader finds out at its next renewal and exits at once.
    let mut c = c;
    let now = MicroTime(jiff::Timestamp::now());
    leases
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "intruder", "renewTime": now}})),
        )
        .await
        .unwrap();
    let intruded = Instant::now();
    let exited = support::process::wait_until(LEASE_DURATION, || !c.is_running());
    assert!(exited, "the leader kept running\n{}", c.log_tail(20));
    println!(
        "Lease taken away: the leader exited after {:?}",
        intruded.elapsed()
    );
    assert!(
        c.logs().contains("lost the leader Lease"),
        "{}",
        c.log_tail(20)
    );
}
