//! Seeding replicas: a replica new to a range gets what the range's writer held before it was
//! named (`docs/replication.md`, "Repair"). The table that names it lists the range as
//! `seeding`; once every live sidecar reports that table (or a later one) — so every write from
//! then on reaches the replica — the operator fences the writer at that version (a straggler
//! still on an older table must not write there unreplicated) and runs [`replica::repair`] from
//! the writer to the replica in a task of its own; the next table no longer lists the range as
//! seeding. A range waits for the sidecars at most the converge timeout (as a rebalance Job
//! does): then the pass starts anyway, and the fence keeps the sidecars still behind off the
//! writer until they load a newer table (their clients get `-TRYAGAIN` there meanwhile), so one
//! stuck sidecar cannot hold a replica, a failback or a handover back for as long as it lives.
//! Writes that race the pass are newer than what it copies and are never undone.
//!
//! What finished is kept in memory until a table without it is published: an operator that
//! restarts meanwhile seeds the range again, which is harmless (the pass is idempotent).
//!
//! A pass first writes the marker of replicated data on both ends (`super::lost_data`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use tracing::{info, warn};

use crate::api::RedisInstance;
use crate::redis::connect::{Target, redact};
use crate::redis::protocol::{fence, names, replica};
use crate::redis::serial::SerialConnection;
use crate::routing::Resolver;
use crate::routing::slots::SlotRange;
use crate::routing::table::{ReplicationMode, RoutingTable};

use super::build::replicas::{Seeded, servers};

/// How long a seeding's connection waits to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The seedings of every policy: running, and finished but not yet out of the table.
#[derive(Debug, Default)]
pub struct Seedings {
    state: Mutex<HashMap<String, PolicySeedings>>,
}

#[derive(Debug, Default)]
struct PolicySeedings {
    running: BTreeMap<SeedJob, tokio::task::AbortHandle>,
    done: Vec<Seeded>,
    /// Since when each pending range has waited for sidecars behind the published table.
    waiting: BTreeMap<SeedJob, Instant>,
}

/// One range to seed: category, replica, writer, slots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeedJob {
    /// Category.
    pub category: String,
    /// The replica to seed.
    pub replica: String,
    /// The instance that serves the range (the pass reads it).
    pub writer: String,
    /// The slots.
    pub range: SlotRange,
    /// The category is replicated `Sync` in the table that asks for it ([`Seeded::sync`]).
    pub sync: bool,
}

impl SeedJob {
    /// Whether seeding `d` covers this job: same category, replica and writer, and its slots.
    fn finished_by(&self, d: &Seeded) -> bool {
        self.category == d.category
            && (d.sync || !self.sync)
            && self.replica == d.instance
            && self.writer == d.writer
            && d.range.start <= self.range.start
            && self.range.end <= d.range.end
    }

    fn seeded(&self) -> Seeded {
        Seeded {
            category: self.category.clone(),
            instance: self.replica.clone(),
            writer: self.writer.clone(),
            range: self.range,
            sync: self.sync,
        }
    }
}

/// Where seeding stands for a policy after [`Seedings::drive`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedingProgress {
    /// Ranges the table lists as seeding.
    pub pending: usize,
    /// Live sidecars still on a table older than the published one (no pass starts before
    /// they are on it, or until the converge timeout); `None` when no instance's heartbeats
    /// could be read (none starts then either).
    pub behind: Option<usize>,
    /// Passes started this time although sidecars were behind: the range had waited the
    /// converge timeout.
    pub started_overdue: usize,
}

/// Whether a pending seeding may start: every live sidecar is on the published table
/// (`behind == Some(0)`), or some are behind but the range has waited `timeout` since
/// `waiting_since`. Heartbeats that could not be read (`None`) start nothing: the fence would
/// not know whom it keeps off.
pub fn may_start(
    behind: Option<usize>,
    waiting_since: Instant,
    now: Instant,
    timeout: Duration,
) -> bool {
    match behind {
        Some(0) => true,
        Some(_) => now.saturating_duration_since(waiting_since) >= timeout,
        None => false,
    }
}

/// Connections to a range's writer and replica, named `name` — like a sidecar's connection of
/// the table they work under, so that a fence raised above it on either end (a move into the
/// replica, the replica leaving) closes them and a pass the operator has not stopped yet
/// cannot write there after. Errors carry no credentials.
pub async fn open_pair(
    writer: &Target,
    replica: &Target,
    name: &str,
) -> Result<(SerialConnection, SerialConnection), String> {
    let mut w = SerialConnection::open(writer, CONNECT_TIMEOUT)
        .await
        .map_err(|e| redact(&e.to_string(), &writer.credentials))?;
    let mut r = SerialConnection::open(replica, CONNECT_TIMEOUT)
        .await
        .map_err(|e| redact(&e.to_string(), &replica.credentials))?;
    for (conn, target) in [(&mut w, writer), (&mut r, replica)] {
        let () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query_async(conn)
            .await
            .map_err(|e| redact(&e.to_string(), &target.credentials))?;
    }
    Ok((w, r))
}

/// The ranges `table` lists as seeding, cut where their writer changes.
pub fn pending(table: &RoutingTable) -> Vec<SeedJob> {
    let mut out = Vec::new();
    for cat in &table.categories {
        let Some(r) = &cat.replication else { continue };
        if r.seeding.is_empty() {
            continue;
        }
        let servers = servers(table, &cat.name);
        for run in &r.seeding {
            let mut start = run.range.start;
            for slot in run.range.start..=run.range.end {
                let last = slot == run.range.end;
                let cut = last || servers[usize::from(slot) + 1] != servers[usize::from(slot)];
                if cut {
                    out.push(SeedJob {
                        category: cat.name.clone(),
                        replica: run.instance.clone(),
                        writer: servers[usize::from(slot)].to_owned(),
                        range: SlotRange::new(start, slot),
                        sync: r.mode == ReplicationMode::Sync,
                    });
                    start = slot.saturating_add(1);
                }
            }
        }
    }
    out
}

impl Seedings {
    /// The seedings of policy `key` that finished (for [`super::build::replicas`]).
    pub fn finished(&self, key: &str) -> Vec<Seeded> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.get(key).map(|p| p.done.clone()).unwrap_or_default()
    }

    /// Forgets policy `key` (deleted).
    pub fn forget(&self, key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.remove(key);
    }

    /// Starts a pass for each range `table` (published) lists as seeding, once `sidecars`
    /// (live sidecar → table version) are all on it or the range has waited
    /// `converge_timeout` for them ([`may_start`]); forgets what finished and the table no
    /// longer lists.
    #[allow(clippy::too_many_arguments)]
    pub async fn drive(
        self: &Arc<Self>,
        key: &str,
        secrets: &crate::operator::secrets::SecretReader,
        namespace: &str,
        selected: &[Arc<RedisInstance>],
        table: &RoutingTable,
        sidecars: Option<&BTreeMap<String, u64>>,
        converge_timeout: Duration,
    ) -> SeedingProgress {
        let jobs = pending(table);
        // Heartbeats not read: how many are behind is unknown, so none may start.
        let behind = sidecars.map(|s| s.values().filter(|v| **v < table.version).count());
        let to_start: Vec<SeedJob> = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let policy = state.entry(key.to_owned()).or_default();
            // A pass whose range the published table no longer seeds (its replica dropped or
            // changed, its writer changed) stops: it must not write into copies that are freed,
            // or into the target of a move, meanwhile.
            policy.running.retain(|job, task| {
                let wanted = jobs.contains(job);
                if !wanted {
                    task.abort();
                }
                wanted
            });
            policy
                .done
                .retain(|d| jobs.iter().any(|j| j.finished_by(d)));
            let now = Instant::now();
            let waiting: Vec<SeedJob> = jobs
                .iter()
                .filter(|j| !policy.running.contains_key(*j))
                .filter(|j| !policy.done.iter().any(|d| j.finished_by(d)))
                .cloned()
                .collect();
            // A range's wait lasts while it is pending, over failed passes: the writer is
            // fenced already, so a pass tried again need not wait again.
            policy.waiting.retain(|j, _| jobs.contains(j));
            waiting
                .into_iter()
                .filter(|j| {
                    let since = *policy.waiting.entry(j.clone()).or_insert(now);
                    may_start(behind, since, now, converge_timeout)
                })
                .collect()
        };
        let started_overdue = if behind.is_some_and(|n| n > 0) {
            to_start.len()
        } else {
            0
        };
        if started_overdue > 0 {
            warn!(
                ranges = started_overdue,
                sidecars_behind = ?behind,
                version = table.version,
                "seeding replicas although sidecars are still on an older table after the converge timeout: they are fenced off the writers until they load a newer one"
            );
        }
        let progress = SeedingProgress {
            pending: jobs.len(),
            behind,
            started_overdue,
        };
        if to_start.is_empty() {
            return progress;
        }
        let resolver = match Resolver::new(table.clone()) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                warn!(error = %e, "cannot seed replicas: the published table does not resolve");
                return progress;
            }
        };
        let find = |name: &str| selected.iter().find(|ri| ri.name_any() == name);
        let needs_marker = Arc::new(super::build::replicas::must_hold_marker(table));
        for job in to_start {
            let (Some(writer), Some(replica)) = (find(&job.writer), find(&job.replica)) else {
                continue;
            };
            let (Ok(writer_target), Ok(replica_target)) = (
                secrets.target_of(writer, namespace).await,
                secrets.target_of(replica, namespace).await,
            ) else {
                warn!(writer = %job.writer, replica = %job.replica, "cannot seed a replica: an instance's credentials are missing");
                continue;
            };
            let Some(category) = resolver.category_id(&job.category) else {
                continue;
            };
            let this = Arc::clone(self);
            let needs_marker = Arc::clone(&needs_marker);
            let task_key = key.to_owned();
            let resolver = Arc::clone(&resolver);
            let (policy, version) = (table.policy.clone(), table.version);
            let started_job = job.clone();
            // Held until the task is registered below, so that it cannot finish first.
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let task = tokio::spawn(async move {
                let started = Instant::now();
                info!(category = %job.category, replica = %job.replica, writer = %job.writer,
                    slots = %format!("{}-{}", job.range.start, job.range.end), "seeding a replica");
                let result = async {
                    let (mut w, mut r) = open_pair(
                        &writer_target,
                        &replica_target,
                        &names::connection_name(&policy, "operator-seeding", version),
                    )
                    .await?;
                    // Both ends hold the range's data from now on: an end that later answers
                    // without the marker lost it (`super::lost_data`). An end the table
                    // already needs it on and that lacks it lost its data before this pass:
                    // the pass waits for the reconcile to fail that over (copying from a
                    // writer that lost its data would empty the replica).
                    for (conn, target, name) in [
                        (&mut w, &writer_target, &job.writer),
                        (&mut r, &replica_target, &job.replica),
                    ] {
                        if needs_marker.contains(name) {
                            let held: Option<String> = redis::cmd("GET")
                                .arg(names::holds(&policy))
                                .query_async(conn)
                                .await
                                .map_err(|e| redact(&e.to_string(), &target.credentials))?;
                            if held.is_none() {
                                return Err(format!(
                                    "{name} answers without the marker of replicated data: it lost its data"
                                ));
                            }
                        }
                        super::lost_data::mark(conn, &policy)
                            .await
                            .map_err(|e| redact(&e.to_string(), &target.credentials))?;
                    }
                    // Every live sidecar routes by this table, so every write from now on
                    // reaches the replica; a straggler on an older one (a mounted table can lag
                    // by minutes) must not write there unreplicated behind the pass: the
                    // writer is fenced at this version first, as a move fences its ends.
                    let fenced = [(job.writer.clone(), version)];
                    fence::raise(&mut w, &policy, &fenced)
                        .await
                        .map_err(|e| redact(&e.to_string(), &writer_target.credentials))?;
                    fence::close_older_connections(&mut w, &policy, version)
                        .await
                        .map_err(|e| redact(&e.to_string(), &writer_target.credentials))?;
                    replica::repair(
                        &mut w,
                        &mut r,
                        &resolver,
                        category,
                        &[job.range],
                        &policy,
                        version,
                    )
                    .await
                    .map_err(|e| {
                        // From either connection: neither end's password may show.
                        let text = redact(&e.to_string(), &writer_target.credentials);
                        redact(&text, &replica_target.credentials)
                    })
                }
                .await;
                let mut state = this.state.lock().unwrap_or_else(|e| e.into_inner());
                let entry = state.entry(task_key).or_default();
                entry.running.remove(&job);
                match result {
                    Ok(done) if done.failed == 0 => {
                        info!(category = %job.category, replica = %job.replica,
                            keys = done.keys, applied = done.applied, kept = done.kept,
                            seconds = started.elapsed().as_secs_f64(), "replica seeded");
                        entry.done.push(job.seeded());
                    }
                    Ok(done) => warn!(category = %job.category, replica = %job.replica,
                        failed = done.failed, "seeding a replica: some keys were refused; trying again"),
                    Err(e) => warn!(category = %job.category, replica = %job.replica,
                        error = %e, "seeding a replica failed; trying again"),
                }
            });
            state
                .entry(key.to_owned())
                .or_default()
                .running
                .insert(started_job, task.abort_handle());
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeding_waits_for_sidecars_behind_only_until_the_converge_timeout() {
        let since = Instant::now();
        let timeout = Duration::from_secs(120);
        let soon = since + Duration::from_secs(5);
        let later = since + timeout;
        // Every live sidecar on the table: at once.
        assert!(may_start(Some(0), since, since, timeout));
        // Some behind: not before the timeout, then yes (the writer's fence keeps them off).
        assert!(!may_start(Some(2), since, soon, timeout));
        assert!(may_start(Some(2), since, later, timeout));
        // Heartbeats unread: never — who is behind is unknown.
        assert!(!may_start(None, since, later, timeout));
        // A clock that reads earlier than the start of the wait counts as no wait.
        assert!(!may_start(Some(1), soon, since, timeout));
    }
}
