use super::*;
use crate::api::ByteSize;

fn spec() -> RedisInstanceSpec {
    serde_json::from_value(serde_json::json!({
        "external": {"host": "redis", "port": 6379},
        "capacity": "30Mi",
        "health": {"interval": "1s", "timeout": "500ms", "failureThreshold": 3,
                   "recoveryThreshold": 2, "latencyThreshold": "50ms"}
    }))
    .unwrap()
}

fn probe(used: u64) -> ProbeSummary {
    ProbeSummary {
        latency: Duration::from_micros(400),
        redis_version: Some("7.0.15".into()),
        used_bytes: used,
        maxmemory: 0,
        keys: 10,
        connected_clients: 2,
        evicted_keys: 0,
        eviction_policy: Some("noeviction".into()),
        counters: RedisCounters::default(),
        window: Some(WindowStats {
            hits: 90,
            misses: 10,
            ops_per_second: 100.0,
            evictions: 0,
        }),
    }
}

fn fail() -> Result<ProbeSummary, Failure> {
    Err(Failure {
        reason: "ConnectionRefused".into(),
        message: "127.0.0.1:1: connection refused".into(),
    })
}

fn observe(
    spec: &RedisInstanceSpec,
    prev: Option<&RedisInstanceStatus>,
    outcome: Result<ProbeSummary, Failure>,
    t: i64,
) -> Next {
    next_status(
        prev,
        &Observation {
            now: Timestamp::from_second(t).unwrap(),
            generation: Some(1),
            spec,
            endpoint: "redis:6379".into(),
            outcome,
            managed_ready: None,
            capacity_threshold: 80,
        },
    )
}

fn phase(n: &Next) -> InstancePhase {
    n.status.phase.unwrap()
}

#[test]
fn first_good_probe_is_ready_with_memory_and_stats() {
    let s = spec();
    let n = observe(&s, None, Ok(probe(12 << 20)), 1);
    assert_eq!(phase(&n), InstancePhase::Ready);
    let m = n.status.memory.as_ref().unwrap();
    assert_eq!(
        (m.used_bytes, m.capacity_bytes, m.used_percent),
        (12 << 20, 30 << 20, Some(40))
    );
    assert_eq!((m.used.as_str(), m.capacity.as_str()), ("12.0Mi", "30.0Mi"));
    let st = n.status.stats.as_ref().unwrap();
    assert_eq!(
        (st.hit_ratio, st.hit_percent, st.ops_per_second),
        (Some(0.9), Some(90), 100)
    );
    assert_eq!(n.status.latency.as_deref(), Some("400µs"));
    for t in [READY, REACHABLE, WITHIN_CAPACITY] {
        assert!(
            crate::api::conditions::is_true(&n.status.conditions, t),
            "{t}"
        );
    }
    assert!(matches!(
        n.transitions[0],
        Transition::Phase {
            to: InstancePhase::Ready,
            ..
        }
    ));
}

#[test]
fn unreachable_only_after_the_failure_threshold_and_back_after_recovery() {
    let s = spec();
    let mut st = observe(&s, None, Ok(probe(1 << 20)), 1).status;
    for i in 1..=2 {
        let n = observe(&s, Some(&st), fail(), 1 + i);
        assert_eq!(
            phase(&n),
            InstancePhase::Ready,
            "failure {i} must not flip the phase"
        );
        assert!(!crate::api::conditions::is_true(
            &n.status.conditions,
            REACHABLE
        ));
        st = n.status;
    }
    let n = observe(&s, Some(&st), fail(), 4);
    assert_eq!(phase(&n), InstancePhase::Unreachable);
    assert_eq!(n.status.consecutive_failures, 3);
    assert!(matches!(
        &n.transitions[0],
        Transition::Phase { from: InstancePhase::Ready, to: InstancePhase::Unreachable, reason, .. } if reason == "ConnectionRefused"
    ));
    st = n.status;
    let n = observe(&s, Some(&st), Ok(probe(1 << 20)), 5);
    assert_eq!(
        phase(&n),
        InstancePhase::Unreachable,
        "one good probe is not recovery"
    );
    assert!(n.transitions.is_empty());
    let n = observe(&s, Some(&n.status), Ok(probe(1 << 20)), 6);
    assert_eq!(phase(&n), InstancePhase::Ready);
    assert_eq!(n.status.consecutive_successes, 2);
}

#[test]
fn a_failure_in_between_resets_recovery() {
    let s = spec();
    let mut st = observe(&s, None, Ok(probe(0)), 1).status;
    for t in 2..=4 {
        st = observe(&s, Some(&st), fail(), t).status;
    }
    st = observe(&s, Some(&st), Ok(probe(0)), 5).status;
    st = observe(&s, Some(&st), fail(), 6).status;
    st = observe(&s, Some(&st), Ok(probe(0)), 7).status;
    assert_eq!(st.phase, Some(InstancePhase::Unreachable));
}

#[test]
fn degraded_when_slow_over_capacity_or_evicting() {
    let s = spec();
    let mut slow = probe(1 << 20);
    slow.latency = Duration::from_millis(80);
    let mut st = observe(&s, None, Ok(slow.clone()), 1).status;
    st = observe(&s, Some(&st), Ok(slow.clone()), 2).status;
    let n = observe(&s, Some(&st), Ok(slow), 3);
    assert_eq!(phase(&n), InstancePhase::Degraded);
    assert!(crate::api::conditions::is_true(&n.status.conditions, READY));

    let n = observe(&s, None, Ok(probe(31 << 20)), 1);
    assert_eq!(phase(&n), InstancePhase::Degraded);
    assert!(!crate::api::conditions::is_true(
        &n.status.conditions,
        WITHIN_CAPACITY
    ));

    let mut evicting = probe(1 << 20);
    evicting.window.as_mut().unwrap().evictions = 5;
    assert_eq!(
        phase(&observe(&s, None, Ok(evicting), 1)),
        InstancePhase::Degraded
    );
}

fn with_latency(millis: u64) -> Result<ProbeSummary, Failure> {
    let mut p = probe(1 << 20);
    p.latency = Duration::from_millis(millis);
    Ok(p)
}

fn ready_reason(n: &Next) -> String {
    find(&n.status.conditions, READY).unwrap().reason.clone()
}

#[test]
fn slow_takes_failure_threshold_slow_probes_and_clears_after_recovery_threshold_fast_ones() {
    // failureThreshold 3, recoveryThreshold 2, latencyThreshold 50ms.
    let s = spec();
    let mut n = observe(&s, None, with_latency(1), 0);
    for (t, millis, want) in [
        (1, 80, InstancePhase::Ready),
        (2, 80, InstancePhase::Ready),
        (3, 80, InstancePhase::Degraded),
        (4, 1, InstancePhase::Degraded),
        (5, 80, InstancePhase::Degraded),
        (6, 1, InstancePhase::Degraded),
        (7, 1, InstancePhase::Ready),
    ] {
        n = observe(&s, Some(&n.status), with_latency(millis), t);
        assert_eq!(phase(&n), want, "after the probe at {t} ({millis} ms)");
    }
    // While it clears, the message says how far it got.
    let mut st = n.status;
    for t in 8..11 {
        st = observe(&s, Some(&st), with_latency(80), t).status;
    }
    let clearing = observe(&s, Some(&st), with_latency(1), 11);
    assert_eq!(ready_reason(&clearing), "HighLatency");
    let message = &find(&clearing.status.conditions, READY).unwrap().message;
    assert!(message.contains("1 of 2 fast probes"), "{message}");
}

#[test]
fn alternating_slow_and_fast_pings_never_flip_the_phase() {
    let s = spec();
    let mut n = observe(&s, None, with_latency(1), 0);
    for t in 1..40 {
        let millis = if t % 3 == 0 { 1 } else { 80 };
        n = observe(&s, Some(&n.status), with_latency(millis), t);
        assert_eq!(phase(&n), InstancePhase::Ready, "probe {t}");
        assert!(n.transitions.is_empty(), "probe {t}: {:?}", n.transitions);
    }
}

#[test]
fn over_capacity_is_not_taken_for_slow() {
    // An instance Degraded for memory that turns slow is HighLatency only after the slow
    // probes, and its fast probes are counted while it is Degraded for memory.
    let s = spec();
    let full = |millis: u64| {
        let mut p = probe(31 << 20);
        p.latency = Duration::from_millis(millis);
        Ok(p)
    };
    let mut n = observe(&s, None, full(1), 0);
    assert_eq!(ready_reason(&n), "OverCapacity");
    n = observe(&s, Some(&n.status), full(80), 1);
    assert_eq!(ready_reason(&n), "OverCapacity");
    n = observe(&s, Some(&n.status), full(80), 2);
    n = observe(&s, Some(&n.status), full(80), 3);
    assert_eq!(ready_reason(&n), "HighLatency");
    n = observe(&s, Some(&n.status), full(1), 4);
    assert_eq!(ready_reason(&n), "HighLatency");
    n = observe(&s, Some(&n.status), full(1), 5);
    assert_eq!(ready_reason(&n), "OverCapacity");
}

#[test]
fn capacity_from_maxmemory_or_unknown() {
    let mut s = spec();
    s.capacity = None;
    let mut p = probe(1 << 20);
    p.maxmemory = 10 << 20;
    let n = observe(&s, None, Ok(p.clone()), 1);
    assert_eq!(n.status.memory.unwrap().capacity_bytes, 10 << 20);
    p.maxmemory = 0;
    let n = observe(&s, None, Ok(p), 1);
    assert_eq!(phase(&n), InstancePhase::Pending);
    let ready = find(&n.status.conditions, READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "CapacityUnknown")
    );
    assert_eq!(
        find(&n.status.conditions, WITHIN_CAPACITY).unwrap().reason,
        "CapacityUnknown"
    );
    s.capacity = Some("1Gi".parse::<ByteSize>().unwrap());
    assert_eq!(capacity_bytes(&s, Some(0)), Some(1 << 30));
}

#[test]
fn threshold_crossings_are_reported_once() {
    let s = spec();
    let st = observe(&s, None, Ok(probe(10 << 20)), 1).status;
    let n = observe(&s, Some(&st), Ok(probe(25 << 20)), 2);
    assert!(n.transitions.contains(&Transition::ThresholdExceeded {
        used_percent: 83,
        threshold: 80
    }));
    let n2 = observe(&s, Some(&n.status), Ok(probe(26 << 20)), 3);
    assert!(n2.transitions.is_empty());
    let n3 = observe(&s, Some(&n2.status), Ok(probe(5 << 20)), 4);
    assert!(n3.transitions.contains(&Transition::ThresholdCleared {
        used_percent: 16,
        threshold: 80
    }));
}

#[test]
fn draining_and_pending_managed() {
    let mut s = spec();
    s.drain = true;
    assert_eq!(
        phase(&observe(&s, None, Ok(probe(0)), 1)),
        InstancePhase::Draining
    );
    let s = spec();
    let n = next_status(
        None,
        &Observation {
            now: Timestamp::from_second(1).unwrap(),
            generation: Some(1),
            spec: &s,
            endpoint: "x:6379".into(),
            outcome: fail(),
            managed_ready: Some(false),
            capacity_threshold: 80,
        },
    );
    assert_eq!(phase(&n), InstancePhase::Pending);
    assert_eq!(
        find(&n.status.conditions, READY).unwrap().reason,
        "StatefulSetNotReady"
    );
}

const REFRESH: Duration = Duration::from_secs(300);
const RECENT: Option<Duration> = Some(Duration::from_secs(10));

fn decide(written: &RedisInstanceStatus, next: &RedisInstanceStatus) -> Write {
    write_decision(Some(written), next, RECENT, REFRESH)
}

#[test]
fn live_figures_alone_are_not_written() {
    let s = spec();
    let a = observe(&s, None, Ok(probe(12 << 20)), 1).status;
    let mut live = probe(12 << 20);
    live.latency = Duration::from_micros(650);
    live.keys = 10_000;
    live.connected_clients = 40;
    live.window = Some(WindowStats {
        hits: 5000,
        misses: 1,
        ops_per_second: 9000.0,
        evictions: 0,
    });
    let b = observe(&s, Some(&a), Ok(live), 2).status;
    assert_ne!(a, b, "the probe did change the figures");
    assert_eq!(
        decide(&a, &b),
        Write::Skip,
        "timestamps, latency, keys, clients and traffic are metrics"
    );
}

#[test]
fn memory_is_written_once_it_moved_a_point_of_capacity_from_the_last_write() {
    let s = spec(); // 30 MiB: one point is 314 573 bytes
    let written = observe(&s, None, Ok(probe(12 << 20)), 1).status;
    let mut prev = written.clone();
    // Creeping up 100 KiB a probe: each step is small, the sum is not.
    let mut decisions = Vec::new();
    for step in 1..=4u64 {
        let next = observe(
            &s,
            Some(&prev),
            Ok(probe((12 << 20) + step * 100 * 1024)),
            1 + step as i64,
        )
        .status;
        decisions.push(decide(&written, &next));
        prev = next;
    }
    assert_eq!(
        decisions,
        [Write::Skip, Write::Skip, Write::Skip, Write::Changed],
        "400 KiB of drift is more than one point of 30 MiB; 300 KiB is not"
    );
    let down = observe(&s, Some(&written), Ok(probe((12 << 20) - 320 * 1024)), 9).status;
    assert_eq!(decide(&written, &down), Write::Changed, "down counts too");
}

#[test]
fn phases_and_conditions_are_written_at_once() {
    let s = spec();
    let ready = observe(&s, None, Ok(probe(1 << 20)), 1).status;
    // The first failed probe keeps the phase but flips Reachable.
    let failed = observe(&s, Some(&ready), fail(), 2).status;
    assert_eq!(failed.phase, Some(InstancePhase::Ready));
    assert_eq!(decide(&ready, &failed), Write::Changed);
    // Failures 2 and 3: the count is in memory, the phase change is written.
    let second = observe(&s, Some(&failed), fail(), 3).status;
    assert_eq!(decide(&failed, &second), Write::Skip);
    let third = observe(&s, Some(&second), fail(), 4).status;
    assert_eq!(third.phase, Some(InstancePhase::Unreachable));
    assert_eq!(decide(&failed, &third), Write::Changed);
    // Crossing the capacity threshold flips WithinCapacity.
    let full = observe(&s, Some(&ready), Ok(probe(25 << 20)), 5).status;
    assert_eq!(decide(&ready, &full), Write::Changed);
    // A new generation is written even when nothing else changed.
    let mut next = observe(&s, Some(&ready), Ok(probe(1 << 20)), 6).status;
    next.observed_generation = Some(2);
    assert_eq!(decide(&ready, &next), Write::Changed);
}

#[test]
fn an_unchanged_status_is_refreshed_after_the_interval() {
    let s = spec();
    let a = observe(&s, None, Ok(probe(1 << 20)), 1).status;
    let b = observe(&s, Some(&a), Ok(probe(1 << 20)), 2).status;
    assert_eq!(write_decision(None, &b, None, REFRESH), Write::Changed);
    assert_eq!(
        write_decision(Some(&a), &b, Some(Duration::from_secs(299)), REFRESH),
        Write::Skip
    );
    assert_eq!(
        write_decision(Some(&a), &b, Some(REFRESH), REFRESH),
        Write::Refresh
    );
    assert_eq!(write_decision(Some(&a), &b, None, REFRESH), Write::Refresh);
}

#[test]
fn latency_formatting() {
    assert_eq!(format_latency(Duration::from_micros(420)), "420µs");
    assert_eq!(format_latency(Duration::from_micros(1234)), "1.2ms");
    assert_eq!(format_latency(Duration::from_millis(35)), "35ms");
}

fn with_policy(policy: &str) -> Result<ProbeSummary, Failure> {
    let mut p = probe(1 << 20);
    p.eviction_policy = Some(policy.into());
    Ok(p)
}

fn eviction_safe(n: &Next) -> Option<(String, String)> {
    find(&n.status.conditions, EVICTION_SAFE).map(|c| (c.status.clone(), c.reason.clone()))
}

#[test]
fn an_allkeys_policy_is_not_eviction_safe_and_changes_of_side_are_reported_once() {
    let s = spec();
    // A safe policy on the first probe says so, with no Event.
    let n = observe(&s, None, with_policy("volatile-lru"), 1);
    assert_eq!(n.status.eviction_policy.as_deref(), Some("volatile-lru"));
    assert_eq!(
        eviction_safe(&n),
        Some(("True".into(), "KeepsKeysWithoutTTL".into()))
    );
    assert!(
        !n.transitions
            .iter()
            .any(|t| matches!(t, Transition::EvictionPolicy { .. }))
    );
    // Turned to allkeys-lru: False, once.
    let n = observe(&s, Some(&n.status), with_policy("allkeys-lru"), 2);
    assert_eq!(
        eviction_safe(&n),
        Some(("False".into(), "EvictsKeysWithoutTTL".into()))
    );
    assert!(n.transitions.contains(&Transition::EvictionPolicy {
        policy: "allkeys-lru".into(),
        safe: false
    }));
    assert_eq!(
        decide(
            &observe(&s, None, with_policy("volatile-lru"), 1).status,
            &n.status
        ),
        Write::Changed,
        "a policy change is written at once"
    );
    let again = observe(&s, Some(&n.status), with_policy("allkeys-random"), 3);
    assert!(
        !again
            .transitions
            .iter()
            .any(|t| matches!(t, Transition::EvictionPolicy { .. })),
        "still unsafe: no second Event"
    );
    // A failed probe keeps what was known.
    let failed = observe(&s, Some(&again.status), fail(), 4);
    assert_eq!(
        failed.status.eviction_policy.as_deref(),
        Some("allkeys-random")
    );
    assert_eq!(eviction_safe(&failed).unwrap().0, "False");
    // Back to noeviction: True, once.
    let back = observe(&s, Some(&failed.status), with_policy("noeviction"), 5);
    assert_eq!(eviction_safe(&back).unwrap().0, "True");
    assert!(back.transitions.contains(&Transition::EvictionPolicy {
        policy: "noeviction".into(),
        safe: true
    }));
    // An unsafe policy on the very first probe is reported.
    let first = observe(&s, None, with_policy("allkeys-lfu"), 1);
    assert!(first.transitions.contains(&Transition::EvictionPolicy {
        policy: "allkeys-lfu".into(),
        safe: false
    }));
}
