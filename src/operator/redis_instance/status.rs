//! The next status of a RedisInstance from its previous status and one probe — pure, so every
//! phase rule is unit-tested without a cluster or a Redis.
//!
//! Phase rules:
//! - `Unreachable` after `failureThreshold` failed probes in a row; before that the previous
//!   phase stands (one lost packet does not fail a category over).
//! - Back from `Unreachable` only after `recoveryThreshold` good probes in a row (no flapping).
//! - `Pending` until the first good probe, while a managed StatefulSet is not ready, or while
//!   the capacity is unknown (no `spec.capacity` and `maxmemory` 0).
//! - `Degraded` when reachable but slow, over 100 % of capacity, or evicting keys during the
//!   last window. Slow has the failure rules' hysteresis: `failureThreshold` PINGs above
//!   `latencyThreshold` in a row make it slow, `recoveryThreshold` PINGs within it in a row make
//!   it fast again (one PING delayed by a busy network or host flips nothing).
//! - `Draining` when `spec.drain` is set and it is reachable; else `Ready`.
//!
//! `EvictionSafe` is False while the server's `maxmemory-policy` is an `allkeys-*` one: it may
//! evict the fleet's own keys (they carry no TTL), so no rebalance moves data out of it.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::conditions::{Time, condition, find, set_condition};
use crate::api::quantity::format_bytes_human;
use crate::api::redis_instance::{
    InstancePhase, MemoryStatus, RedisInstanceSpec, RedisInstanceStatus, StatsStatus,
    evicts_keys_without_ttl,
};
use crate::operator::metrics::RedisCounters;
use crate::operator::status_writes::{Write, moved_a_point};

/// Condition types of a RedisInstance.
pub mod condition_type {
    /// The last probe got an answer.
    pub const REACHABLE: &str = "Reachable";
    /// Used memory is below the capacity threshold.
    pub const WITHIN_CAPACITY: &str = "WithinCapacity";
    /// The instance can serve traffic.
    pub const READY: &str = "Ready";
    /// Its `maxmemory-policy` never evicts a key without a TTL (`noeviction`, `volatile-*`),
    /// so rebalancing may move data out of it.
    pub const EVICTION_SAFE: &str = "EvictionSafe";
}
use condition_type::{EVICTION_SAFE, REACHABLE, READY, WITHIN_CAPACITY};

/// The `Ready` reason of an instance that answers slowly.
const HIGH_LATENCY: &str = "HighLatency";

/// What one successful probe measured, reduced to what status needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSummary {
    /// PING round trip.
    pub latency: Duration,
    /// `redis_version` (or `valkey_version`).
    pub redis_version: Option<String>,
    /// `used_memory`.
    pub used_bytes: u64,
    /// `maxmemory` (0 = unbounded).
    pub maxmemory: u64,
    /// Keys over all databases.
    pub keys: u64,
    /// `connected_clients`.
    pub connected_clients: u64,
    /// `evicted_keys` since the server started.
    pub evicted_keys: u64,
    /// `maxmemory_policy`, when INFO reports it.
    pub eviction_policy: Option<String>,
    /// Redis's own counters as INFO reported them, mirrored by the metrics.
    pub counters: RedisCounters,
    /// Rates over the window since the previous probe; `None` on the first probe.
    pub window: Option<WindowStats>,
}

/// Traffic between two probes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStats {
    /// Keyspace hits during the window.
    pub hits: u64,
    /// Keyspace misses during the window.
    pub misses: u64,
    /// Commands per second.
    pub ops_per_second: f64,
    /// Keys evicted during the window.
    pub evictions: u64,
}

/// Why the operator could not probe or judge the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase reason (`ConnectionRefused`, `AuthenticationFailed`, `SecretNotFound`, …).
    pub reason: String,
    /// Human-readable detail, free of credentials.
    pub message: String,
}

/// One observation of an instance.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// Now.
    pub now: Timestamp,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: &'a RedisInstanceSpec,
    /// `host:port` probed.
    pub endpoint: String,
    /// The probe's result.
    pub outcome: Result<ProbeSummary, Failure>,
    /// For managed instances: whether the StatefulSet reports a ready replica.
    pub managed_ready: Option<bool>,
    /// The lowest `capacityThreshold` (percent) of the CachePolicies selecting the instance.
    pub capacity_threshold: i32,
}

/// Something that happened and deserves an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The phase changed.
    Phase {
        /// Previous phase.
        from: InstancePhase,
        /// New phase.
        to: InstancePhase,
        /// CamelCase reason of the change.
        reason: String,
        /// Detail.
        message: String,
    },
    /// Used memory crossed the capacity threshold upwards.
    ThresholdExceeded {
        /// Usage in percent.
        used_percent: i32,
        /// The threshold.
        threshold: i32,
    },
    /// Used memory went back below the threshold.
    ThresholdCleared {
        /// Usage in percent.
        used_percent: i32,
        /// The threshold.
        threshold: i32,
    },
    /// The `maxmemory-policy` changed from one that keeps keys without a TTL to one that may
    /// evict them (`safe` false), or back (`safe` true).
    EvictionPolicy {
        /// The policy now.
        policy: String,
        /// Whether it keeps keys without a TTL.
        safe: bool,
    },
}

/// The new status and what changed.
#[derive(Debug, Clone)]
pub struct Next {
    /// The status to write.
    pub status: RedisInstanceStatus,
    /// Events to record.
    pub transitions: Vec<Transition>,
}

/// The effective capacity: `spec.capacity`, else `maxmemory`; `None` when unknown.
pub fn capacity_bytes(spec: &RedisInstanceSpec, maxmemory: Option<u64>) -> Option<u64> {
    spec.capacity
        .as_ref()
        .map(|c| c.bytes())
        .or_else(|| spec.managed.as_ref().map(|m| m.max_memory.bytes()))
        .or(maxmemory.filter(|m| *m > 0))
}

/// Whole percent of `used` in `capacity`, rounded down.
pub fn percent(used: u64, capacity: u64) -> i32 {
    if capacity == 0 {
        return 0;
    }
    i32::try_from(u128::from(used) * 100 / u128::from(capacity)).unwrap_or(i32::MAX)
}

/// `420µs`, `1.2ms`, `35ms`.
pub fn format_latency(latency: Duration) -> String {
    let micros = latency.as_micros();
    if micros < 1000 {
        format!("{micros}µs")
    } else if micros < 10_000 {
        format!("{:.1}ms", micros as f64 / 1000.0)
    } else {
        format!("{}ms", micros / 1000)
    }
}

/// Computes the next status.
pub fn next_status(prev: Option<&RedisInstanceStatus>, obs: &Observation<'_>) -> Next {
    let prev_status = prev.cloned().unwrap_or_default();
    let prev_phase = prev_status.phase.unwrap_or_default();
    let mut status = prev_status.clone();
    status.observed_generation = obs.generation;
    status.endpoint = Some(obs.endpoint.clone());
    status.last_probe_time = Some(Time(obs.now));
    let health = &obs.spec.health;
    let generation = obs.generation;
    let mut transitions = Vec::new();

    let (phase, reason, message) = match &obs.outcome {
        Err(failure) => {
            status.consecutive_failures = prev_status.consecutive_failures.saturating_add(1);
            status.consecutive_successes = 0;
            set_condition(
                &mut status.conditions,
                condition(
                    REACHABLE,
                    false,
                    &failure.reason,
                    &failure.message,
                    generation,
                    obs.now,
                ),
            );
            let failed_enough = status.consecutive_failures >= health.failure_threshold;
            let never_served = matches!(prev_phase, InstancePhase::Pending);
            if failed_enough && !(never_served && obs.managed_ready == Some(false)) {
                (
                    InstancePhase::Unreachable,
                    failure.reason.clone(),
                    format!(
                        "{} probes failed in a row: {}",
                        status.consecutive_failures, failure.message
                    ),
                )
            } else if never_served {
                let (reason, message) = if obs.managed_ready == Some(false) {
                    (
                        "StatefulSetNotReady".to_owned(),
                        "waiting for the managed Redis pod to become ready".to_owned(),
                    )
                } else {
                    (failure.reason.clone(), failure.message.clone())
                };
                (InstancePhase::Pending, reason, message)
            } else {
                // Below the failure threshold the previous verdict stands.
                let keep = find(&prev_status.conditions, READY);
                (
                    prev_phase,
                    keep.map_or_else(|| prev_phase.as_str().to_owned(), |c| c.reason.clone()),
                    keep.map_or_else(String::new, |c| c.message.clone()),
                )
            }
        }
        Ok(probe) => {
            status.consecutive_successes = prev_status.consecutive_successes.saturating_add(1);
            status.consecutive_failures = 0;
            if probe.latency > health.latency_threshold.get() {
                status.consecutive_slow_probes =
                    prev_status.consecutive_slow_probes.saturating_add(1);
                status.consecutive_fast_probes = 0;
            } else {
                status.consecutive_fast_probes =
                    prev_status.consecutive_fast_probes.saturating_add(1);
                status.consecutive_slow_probes = 0;
            }
            let was_slow = prev_phase == InstancePhase::Degraded
                && find(&prev_status.conditions, READY).is_some_and(|c| c.reason == HIGH_LATENCY);
            set_condition(
                &mut status.conditions,
                condition(
                    REACHABLE,
                    true,
                    "Pong",
                    format!("PING answered in {}", format_latency(probe.latency)),
                    generation,
                    obs.now,
                ),
            );
            apply_probe(&mut status, probe, obs);
            judge_reachable(&mut status, prev_phase, was_slow, probe, obs)
        }
    };

    // Capacity threshold (WithinCapacity) from the memory now in status.
    if let Some(memory) = &status.memory
        && memory.capacity_bytes > 0
    {
        let used_percent = memory.used_percent.unwrap_or(0);
        let within = used_percent < obs.capacity_threshold;
        let was_within =
            find(&prev_status.conditions, WITHIN_CAPACITY).is_none_or(|c| c.status == "True");
        let (reason, message) = if within {
            (
                "BelowThreshold",
                format!(
                    "{} of {} used ({used_percent}%), threshold {}%",
                    memory.used, memory.capacity, obs.capacity_threshold
                ),
            )
        } else {
            (
                "AboveThreshold",
                format!(
                    "{} of {} used ({used_percent}%) is at or above the {}% threshold",
                    memory.used, memory.capacity, obs.capacity_threshold
                ),
            )
        };
        set_condition(
            &mut status.conditions,
            condition(
                WITHIN_CAPACITY,
                within,
                reason,
                message,
                generation,
                obs.now,
            ),
        );
        if was_within && !within {
            transitions.push(Transition::ThresholdExceeded {
                used_percent,
                threshold: obs.capacity_threshold,
            });
        } else if !was_within && within {
            transitions.push(Transition::ThresholdCleared {
                used_percent,
                threshold: obs.capacity_threshold,
            });
        }
    } else if obs.outcome.is_ok() {
        set_condition(
            &mut status.conditions,
            condition(
                WITHIN_CAPACITY,
                false,
                "CapacityUnknown",
                "maxmemory is 0 (unbounded) and spec.capacity is not set: set spec.capacity",
                generation,
                obs.now,
            ),
        );
    }

    if let Ok(ProbeSummary {
        eviction_policy: Some(policy),
        ..
    }) = &obs.outcome
    {
        judge_eviction(&mut status, &prev_status, policy, obs, &mut transitions);
    }

    let serving = phase.serves_traffic();
    set_condition(
        &mut status.conditions,
        condition(READY, serving, &reason, &message, generation, obs.now),
    );
    status.phase = Some(phase);
    if phase != prev_phase || prev.is_none() {
        transitions.insert(
            0,
            Transition::Phase {
                from: prev_phase,
                to: phase,
                reason,
                message,
            },
        );
    }
    Next {
        status,
        transitions,
    }
}

/// The `EvictionSafe` condition from the policy the server reported, and a transition when
/// it changed sides (or on the first report of an unsafe one).
fn judge_eviction(
    status: &mut RedisInstanceStatus,
    prev: &RedisInstanceStatus,
    policy: &str,
    obs: &Observation<'_>,
    transitions: &mut Vec<Transition>,
) {
    let safe = !evicts_keys_without_ttl(policy);
    let reason = if safe {
        "KeepsKeysWithoutTTL"
    } else {
        "EvictsKeysWithoutTTL"
    };
    let message = eviction_message(policy, safe);
    set_condition(
        &mut status.conditions,
        condition(
            EVICTION_SAFE,
            safe,
            reason,
            message,
            obs.generation,
            obs.now,
        ),
    );
    let was_safe = find(&prev.conditions, EVICTION_SAFE).map(|c| c.status == "True");
    if was_safe.map_or(!safe, |was| was != safe) {
        transitions.push(Transition::EvictionPolicy {
            policy: policy.to_owned(),
            safe,
        });
    }
}

/// What the `EvictionSafe` condition and its Event say of `policy`.
pub fn eviction_message(policy: &str, safe: bool) -> String {
    if safe {
        format!(
            "maxmemory-policy {policy} never evicts a key without a TTL: rebalancing may move data out of this instance"
        )
    } else {
        format!(
            "maxmemory-policy {policy} may evict keys without a TTL, the fleet's own bookkeeping among them: no rebalance moves data out of this instance until it is a volatile-* policy or noeviction"
        )
    }
}

fn apply_probe(status: &mut RedisInstanceStatus, probe: &ProbeSummary, obs: &Observation<'_>) {
    let capacity = capacity_bytes(obs.spec, Some(probe.maxmemory));
    status.redis_version = probe.redis_version.clone();
    status.memory = Some(MemoryStatus {
        used_bytes: i64::try_from(probe.used_bytes).unwrap_or(i64::MAX),
        capacity_bytes: capacity.map_or(0, |c| i64::try_from(c).unwrap_or(i64::MAX)),
        used_percent: capacity.map(|c| percent(probe.used_bytes, c)),
        used: format_bytes_human(probe.used_bytes),
        capacity: capacity.map_or_else(|| "unknown".to_owned(), format_bytes_human),
    });
    status.keys = Some(i64::try_from(probe.keys).unwrap_or(i64::MAX));
    if probe.eviction_policy.is_some() {
        status.eviction_policy = probe.eviction_policy.clone();
    }
    let (hits, misses, hit_ratio, ops) = match probe.window {
        Some(w) => {
            let reads = w.hits + w.misses;
            let ratio = (reads > 0).then(|| w.hits as f64 / reads as f64);
            (w.hits, w.misses, ratio, w.ops_per_second)
        }
        None => (0, 0, None, 0.0),
    };
    status.stats = Some(StatsStatus {
        hits: i64::try_from(hits).unwrap_or(i64::MAX),
        misses: i64::try_from(misses).unwrap_or(i64::MAX),
        hit_ratio: hit_ratio.map(|r| (r * 10_000.0).round() / 10_000.0),
        hit_percent: hit_ratio.map(|r| (r * 100.0).floor() as i32),
        ops_per_second: ops.round() as i64,
        connected_clients: i64::try_from(probe.connected_clients).unwrap_or(i64::MAX),
        evicted_keys: i64::try_from(probe.evicted_keys).unwrap_or(i64::MAX),
    });
    status.latency_micros = Some(i64::try_from(probe.latency.as_micros()).unwrap_or(i64::MAX));
    status.latency = Some(format_latency(probe.latency));
}

/// The phase of an instance that answered.
fn judge_reachable(
    status: &mut RedisInstanceStatus,
    prev_phase: InstancePhase,
    was_slow: bool,
    probe: &ProbeSummary,
    obs: &Observation<'_>,
) -> (InstancePhase, String, String) {
    let health = &obs.spec.health;
    if prev_phase == InstancePhase::Unreachable
        && status.consecutive_successes < health.recovery_threshold
    {
        return (
            InstancePhase::Unreachable,
            "Recovering".to_owned(),
            format!(
                "answering again: {} of {} good probes needed",
                status.consecutive_successes, health.recovery_threshold
            ),
        );
    }
    if obs.managed_ready == Some(false) {
        return (
            InstancePhase::Pending,
            "StatefulSetNotReady".to_owned(),
            "the managed Redis answers but its pod is not ready".to_owned(),
        );
    }
    let Some(capacity) = capacity_bytes(obs.spec, Some(probe.maxmemory)) else {
        return (
            InstancePhase::Pending,
            "CapacityUnknown".to_owned(),
            "maxmemory is 0 (unbounded) and spec.capacity is not set: set spec.capacity".to_owned(),
        );
    };
    let used_percent = percent(probe.used_bytes, capacity);
    let slow = if was_slow {
        status.consecutive_fast_probes < health.recovery_threshold
    } else {
        status.consecutive_slow_probes >= health.failure_threshold
    };
    let mut degraded = Vec::new();
    if slow {
        degraded.push(if was_slow && status.consecutive_fast_probes > 0 {
            format!(
                "PING slower than {}: {} of {} fast probes needed to clear (last {})",
                health.latency_threshold,
                status.consecutive_fast_probes,
                health.recovery_threshold,
                format_latency(probe.latency)
            )
        } else {
            format!(
                "PING took {} (threshold {}), {} slow probes in a row",
                format_latency(probe.latency),
                health.latency_threshold,
                status.consecutive_slow_probes
            )
        });
    }
    if probe.used_bytes > capacity {
        degraded.push(format!("{used_percent}% of capacity used"));
    }
    if let Some(w) = probe.window
        && w.evictions > 0
    {
        degraded.push(format!("{} keys evicted since the last probe", w.evictions));
    }
    if !degraded.is_empty() {
        let reason = if slow {
            HIGH_LATENCY
        } else if probe.used_bytes > capacity {
            "OverCapacity"
        } else {
            "Evicting"
        };
        return (
            InstancePhase::Degraded,
            reason.to_owned(),
            degraded.join("; "),
        );
    }
    if obs.spec.drain {
        return (
            InstancePhase::Draining,
            "Draining".to_owned(),
            "spec.drain is set: no new slots, data moves to other instances".to_owned(),
        );
    }
    (
        InstancePhase::Ready,
        "Healthy".to_owned(),
        format!(
            "{} of {} used",
            format_bytes_human(probe.used_bytes),
            format_bytes_human(capacity)
        ),
    )
}

/// Decides whether `next` is written, given the status last `written` and how long ago
/// (`None`: unknown, treated as due).
///
/// Material, written at once: the phase, a condition's status or reason (the `Reachable`
/// error text too), the observed generation, endpoint, Redis version and eviction policy, the capacity, and
/// used memory once it moved by at least one point of capacity from what was written (so a
/// slow drift is written too, once it adds up). Not material: timestamps, PING latency,
/// traffic, keys, clients, probe counters — live figures, which go to the metrics at every
/// probe and into status with the refresh. The failover path is unaffected: phase and
/// condition changes are never held back.
pub fn write_decision(
    written: Option<&RedisInstanceStatus>,
    next: &RedisInstanceStatus,
    age: Option<Duration>,
    refresh: Duration,
) -> Write {
    let Some(written) = written else {
        return Write::Changed;
    };
    Write::decide(
        changed_materially(written, next),
        written != next,
        age,
        refresh,
    )
}

fn changed_materially(written: &RedisInstanceStatus, next: &RedisInstanceStatus) -> bool {
    fn conditions(s: &RedisInstanceStatus) -> Vec<(&str, &str, &str, &str)> {
        let mut v: Vec<(&str, &str, &str, &str)> = s
            .conditions
            .iter()
            .map(|c| {
                // Messages mostly quote measurements (latency, bytes), compared on their own
                // terms below; an error text is worth a write, though.
                let message = if c.type_ == REACHABLE && c.status == "False" {
                    c.message.as_str()
                } else {
                    ""
                };
                (
                    c.type_.as_str(),
                    c.status.as_str(),
                    c.reason.as_str(),
                    message,
                )
            })
            .collect();
        v.sort_unstable();
        v
    }
    written.phase != next.phase
        || written.observed_generation != next.observed_generation
        || written.endpoint != next.endpoint
        || written.redis_version != next.redis_version
        || written.eviction_policy != next.eviction_policy
        || memory_moved(written.memory.as_ref(), next.memory.as_ref())
        || conditions(written) != conditions(next)
}

/// Whether memory moved by at least one point of capacity from what was written, or the
/// capacity changed.
fn memory_moved(written: Option<&MemoryStatus>, next: Option<&MemoryStatus>) -> bool {
    match (written, next) {
        (None, None) => false,
        (Some(w), Some(n)) => {
            w.capacity_bytes != n.capacity_bytes
                || moved_a_point(
                    w.used_bytes.max(0) as u64,
                    n.used_bytes.max(0) as u64,
                    u64::try_from(n.capacity_bytes).ok(),
                )
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests;
