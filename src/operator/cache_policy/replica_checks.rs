//! The periodic divergence check of seeded replicas (`docs/replication.md`, "The check"):
//! every [`CHECK_EVERY`], per policy, a task compares each seeded replica run with its writer
//! ([`replica_check::check`]) and repairs what the replica missed — an `async` result dropped,
//! an apply refused or lost. What it found is logged, counted
//! (`redisfleet_replica_checked_keys_total`, `redisfleet_replica_divergent_keys_total`) and,
//! when anything diverged, recorded as a Warning Event `ReplicaDiverged`.
//!
//! A check runs under one table version and stops when another is published (its ranges may
//! be moving); a writer found without the marker of replicated data is skipped — it lost its
//! data, and copying its emptiness would empty the replica (`super::lost_data`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};
use tracing::{info, warn};

use crate::api::RedisInstance;
use crate::operator::context::Context;
use crate::operator::metrics::PolicyLabels;
use crate::redis::connect::redact;
use crate::redis::protocol::{names, replica_check};
use crate::routing::Resolver;
use crate::routing::table::{ReplicationMode, RoutingTable};

use super::build::replicas::seeded_runs;
use super::seeding::open_pair;

/// How often the replicas of a policy are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(300);

/// How soon after the last check one starts when a sidecar of a policy with `async`
/// categories vanished from the heartbeats: it may have died with results on their way to a
/// replica (acknowledged writes the replica misses), which the check repairs. A sidecar that
/// stops in order delivers them first, but the operator cannot tell the two apart.
pub const AFTER_A_SIDECAR_LEFT: Duration = Duration::from_secs(60);

/// How long a key found diverging is given before it is compared again: a result on its way
/// (an `async` one within its lag) is not a divergence. A result held longer is still
/// applied correctly after the repair (it is older), but the key is counted.
const SETTLE: Duration = Duration::from_secs(5);

/// The checks of every policy.
#[derive(Debug, Default)]
pub struct ReplicaChecks {
    state: Mutex<HashMap<String, PolicyCheck>>,
    /// Per policy: the sidecars last seen heartbeating, and whether one vanished since the
    /// last check started.
    sidecars: Mutex<HashMap<String, SeenSidecars>>,
}

#[derive(Debug, Default)]
struct SeenSidecars {
    ids: BTreeSet<String>,
    /// Sidecars missing from the last read only: a read reaches a few instances, and a live
    /// sidecar that cannot reach those looks gone once.
    suspects: BTreeSet<String>,
    one_left: bool,
}

impl SeenSidecars {
    /// Notes the sidecars of a read; returns whether one seen before is missing from this
    /// read and the one before it.
    fn note(&mut self, live: &BTreeMap<String, u64>) -> bool {
        let absent: BTreeSet<String> = self
            .ids
            .iter()
            .chain(&self.suspects)
            .filter(|id| !live.contains_key(*id))
            .cloned()
            .collect();
        let left = absent.iter().any(|id| self.suspects.contains(id));
        self.suspects = absent.difference(&self.suspects).cloned().collect();
        self.ids = live.keys().cloned().collect();
        left
    }
}

/// Whether a check is due `since_last` after the last one started: every [`CHECK_EVERY`], or
/// [`AFTER_A_SIDECAR_LEFT`] when a sidecar of a policy with `async` categories vanished.
fn due(since_last: Duration, sidecar_left: bool) -> bool {
    since_last >= CHECK_EVERY || (sidecar_left && since_last >= AFTER_A_SIDECAR_LEFT)
}

#[derive(Debug)]
struct PolicyCheck {
    /// The table version the running (or last) check works under.
    version: u64,
    task: Option<tokio::task::AbortHandle>,
    started: Instant,
}

impl ReplicaChecks {
    /// Forgets policy `key` (deleted), stopping its check.
    pub fn forget(&self, key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(PolicyCheck { task: Some(t), .. }) = state.remove(key) {
            t.abort();
        }
        drop(state);
        self.sidecars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Notes the sidecars heartbeating now (`None`: not read); returns whether one vanished
    /// since the last check started while `table` has `async` categories.
    fn sidecar_left(
        &self,
        key: &str,
        live: Option<&BTreeMap<String, u64>>,
        table: &RoutingTable,
    ) -> bool {
        // An `Async` category reads `Sync` while a range of it is handed over or fails back by
        // swapping roles (it has a failover entry); a sidecar that left may still have held
        // results of writes acknowledged before.
        let asynchronous = table.categories.iter().any(|c| {
            c.replication.as_ref().is_some_and(|r| {
                r.mode == ReplicationMode::Async
                    || table.failover.iter().any(|f| f.category == c.name)
            })
        });
        let mut seen = self.sidecars.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(key.to_owned()).or_default();
        if let Some(live) = live
            && entry.note(live)
            && asynchronous
            && !entry.one_left
        {
            info!(
                "a sidecar stopped heartbeating: the replicas are checked within a minute (it may have died with async results on their way)"
            );
            entry.one_left = true;
        }
        entry.one_left && asynchronous
    }

    /// Stops a check of policy `key` that works under another table than `table` (published),
    /// and starts one when it is due ([`due`]: none ran for [`CHECK_EVERY`], or a minute after
    /// a sidecar in `sidecars`, the live ones if read, vanished) and `table` has seeded
    /// replicas.
    #[allow(clippy::too_many_arguments)]
    pub async fn drive(
        self: &Arc<Self>,
        ctx: &Arc<Context>,
        key: &str,
        namespace: &str,
        selected: &[Arc<RedisInstance>],
        table: &RoutingTable,
        sidecars: Option<&BTreeMap<String, u64>>,
        labels: &PolicyLabels,
        policy_ref: ObjectReference,
    ) {
        let sidecar_left = self.sidecar_left(key, sidecars, table);
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = state.get_mut(key) {
                let finished = c.task.as_ref().is_none_or(|t| t.is_finished());
                if !finished && c.version != table.version {
                    // Its ranges may move under the new table. The next check starts when
                    // this one was due to end at the latest: a series of tables (a seeding
                    // range by range, a rebalance) must not restart the scan at each one.
                    if let Some(t) = c.task.take() {
                        t.abort();
                    }
                }
                if (!finished && c.task.is_some()) || !due(c.started.elapsed(), sidecar_left) {
                    return;
                }
            }
        }
        let jobs = seeded_runs(table);
        if jobs.is_empty() {
            return;
        }
        let find = |name: &str| selected.iter().find(|ri| ri.name_any() == name);
        let mut work = Vec::new();
        for job in jobs {
            let (Some(writer), Some(replica)) = (find(&job.writer), find(&job.instance)) else {
                continue;
            };
            let (Ok(w), Ok(r)) = (
                ctx.secrets.target_of(writer, namespace).await,
                ctx.secrets.target_of(replica, namespace).await,
            ) else {
                continue;
            };
            work.push((job, w, r));
        }
        let resolver = match Resolver::new(table.clone()) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                warn!(error = %e, "cannot check replicas: the published table does not resolve");
                return;
            }
        };
        let (ctx, labels, policy, version) = (
            Arc::clone(ctx),
            labels.clone(),
            table.policy.clone(),
            table.version,
        );
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut per_category: BTreeMap<String, replica_check::Checked> = BTreeMap::new();
            for (job, writer_target, replica_target) in work {
                let Some(category) = resolver.category_id(&job.category) else {
                    continue;
                };
                let result = async {
                    let (mut w, mut r) = open_pair(
                        &writer_target,
                        &replica_target,
                        &names::connection_name(&policy, "operator-check", version),
                    )
                    .await?;
                    let marked: Option<String> = redis::cmd("GET")
                        .arg(names::holds(&policy))
                        .query_async(&mut w)
                        .await
                        .map_err(|e| redact(&e.to_string(), &writer_target.credentials))?;
                    if marked.is_none() {
                        return Ok(None);
                    }
                    replica_check::check(
                        &mut w,
                        &mut r,
                        &resolver,
                        category,
                        &[job.range],
                        &policy,
                        version,
                        SETTLE,
                    )
                    .await
                    .map(Some)
                    .map_err(|e| {
                        let text = redact(&e.to_string(), &writer_target.credentials);
                        redact(&text, &replica_target.credentials)
                    })
                }
                .await;
                match result {
                    Ok(Some(checked)) => {
                        let total = per_category.entry(job.category.clone()).or_default();
                        total.keys += checked.keys;
                        total.divergent += checked.divergent;
                        total.repaired += checked.repaired;
                        total.failed += checked.failed;
                    }
                    Ok(None) => warn!(writer = %job.writer, category = %job.category,
                        "replica check skipped: the writer answers without the marker of replicated data"),
                    Err(e) => warn!(writer = %job.writer, replica = %job.instance,
                        category = %job.category, error = %e, "replica check failed"),
                }
            }
            report(&ctx, &labels, &policy_ref, &per_category, started.elapsed()).await;
        });
        state.insert(
            key.to_owned(),
            PolicyCheck {
                version,
                task: Some(task.abort_handle()),
                started: Instant::now(),
            },
        );
        drop(state);
        if let Some(seen) = self
            .sidecars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
        {
            seen.one_left = false;
        }
    }
}

/// Logs, counts and (when anything diverged) records an Event of a finished check.
async fn report(
    ctx: &Context,
    labels: &PolicyLabels,
    policy_ref: &ObjectReference,
    per_category: &BTreeMap<String, replica_check::Checked>,
    took: Duration,
) {
    let keys: u64 = per_category.values().map(|c| c.keys).sum();
    let divergent: u64 = per_category.values().map(|c| c.divergent).sum();
    ctx.metrics.replica_checked(labels, keys, divergent);
    info!(
        keys,
        divergent,
        seconds = took.as_secs_f64(),
        "replicas checked"
    );
    if divergent == 0 {
        return;
    }
    let what: Vec<String> = per_category
        .iter()
        .filter(|(_, c)| c.divergent > 0)
        .map(|(cat, c)| {
            format!(
                "{cat}: {} of {} keys behind their writer, {} repaired, {} refused",
                c.divergent, c.keys, c.repaired, c.failed
            )
        })
        .collect();
    warn!(found = %what.join("; "), "replicas had diverged from their writers");
    let event = Event {
        type_: EventType::Warning,
        reason: "ReplicaDiverged".to_owned(),
        note: Some(what.join("; ").chars().take(1000).collect()),
        action: "Repair".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, policy_ref).await {
        warn!(error = %e, "recording an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cache_policy::Replication;
    use crate::operator::cache_policy::build::fixtures::{shop, two};
    use crate::operator::cache_policy::build::plan_routing;
    use crate::operator::cache_policy::build::replicas::{ReplicaInputs, place_replicas};
    use crate::operator::cache_policy::seeding::pending;
    use crate::routing::slots::SlotRange;

    #[test]
    fn a_vanished_sidecar_brings_the_next_check_forward() {
        let live = |s: &[&str]| -> BTreeMap<String, u64> {
            s.iter().map(|x| ((*x).to_owned(), 3)).collect()
        };
        let mut seen = SeenSidecars::default();
        assert!(!seen.note(&live(&["a", "b"])));
        assert!(!seen.note(&live(&["a", "b", "c"])), "a newcomer");
        assert!(!seen.note(&live(&["a", "c"])), "b missing from one read");
        assert!(!seen.note(&live(&["a", "b", "c"])), "b is back");
        assert!(!seen.note(&live(&["a", "c"])), "b missing once more");
        assert!(
            seen.note(&live(&["a", "c"])),
            "b missing from two reads in a row"
        );
        assert!(!seen.note(&live(&["a", "c"])), "told once");
        assert!(!due(Duration::from_secs(59), true));
        assert!(due(AFTER_A_SIDECAR_LEFT, true));
        assert!(!due(Duration::from_secs(200), false));
        assert!(due(CHECK_EVERY, false));

        // Noted only for a table with async categories, and kept until a check starts.
        let checks = ReplicaChecks::default();
        let mut spec = shop();
        let views = two();
        let sync_table = plan_routing("shop/shop", &spec, &views, None)
            .table
            .unwrap();
        for c in &mut spec.categories {
            if c.name == "auth" {
                c.replication = Replication::Async;
            }
        }
        let mut t = plan_routing("shop/shop", &spec, &views, None)
            .table
            .unwrap();
        place_replicas(
            &mut t,
            &ReplicaInputs {
                spec: &spec,
                instances: &views,
                previous: None,
                moves: &[],
                seeded: &[],
                swaps_held: false,
            },
        );
        let left = |ids: Option<&[&str]>, table| {
            checks.sidecar_left("shop/shop", ids.map(live).as_ref(), table)
        };
        assert!(!left(Some(&["a", "b"]), &sync_table));
        assert!(!left(Some(&["a"]), &sync_table));
        assert!(!left(Some(&["a"]), &sync_table), "no async category");
        assert!(!left(Some(&["a", "b"]), &t));
        assert!(!left(None, &t), "not read: nothing known");
        assert!(!left(Some(&["a"]), &t), "missing from one read");
        assert!(left(Some(&["a"]), &t), "missing from two");
        assert!(left(Some(&["a", "c"]), &t), "until a check starts");
        assert!(!left(Some(&["a", "c"]), &sync_table), "async no more");
    }

    #[test]
    fn only_seeded_runs_are_checked_each_with_its_writer() {
        let mut spec = shop();
        for c in &mut spec.categories {
            if c.name == "auth" {
                c.replication = Replication::Async;
            }
        }
        let views = two();
        let mut t = plan_routing("shop/shop", &spec, &views, None)
            .table
            .unwrap();
        let inputs = |seeded| ReplicaInputs {
            spec: &spec,
            instances: &views,
            previous: None,
            moves: &[],
            seeded,
            swaps_held: false,
        };
        place_replicas(&mut t, &inputs(&[]));
        // Seeding: nothing to check yet.
        assert!(seeded_runs(&t).is_empty());
        assert_eq!(pending(&t).len(), 1);
        let done: Vec<_> = pending(&t)
            .iter()
            .map(|j| super::super::build::replicas::Seeded {
                category: j.category.clone(),
                instance: j.replica.clone(),
                writer: j.writer.clone(),
                range: j.range,
                sync: j.sync,
            })
            .collect();
        let previous = t.clone();
        let mut t = plan_routing("shop/shop", &spec, &views, Some(&previous))
            .table
            .unwrap();
        place_replicas(
            &mut t,
            &ReplicaInputs {
                previous: Some(&previous),
                ..inputs(&done)
            },
        );
        let runs = seeded_runs(&t);
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(
            (
                runs[0].category.as_str(),
                runs[0].writer.as_str(),
                runs[0].instance.as_str(),
                runs[0].range
            ),
            ("auth", "primary", "secondary", SlotRange::ALL)
        );
    }
}
