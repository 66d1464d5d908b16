//! Seeding replicas: a replica new to a range gets what the range's writer held before it was
//! named (`docs/replication.md`, "Repair"). The table that names it lists the range as
//! `seeding`; once every live sidecar reports that table (or a later one) — so every write from
//! then on reaches the replica — the operator fences the writer at that version (a straggler
//! still on an older table must not write there unreplicated) and runs [`replica::repair`] from
//! the writer to the replica in a task of its own; the next table no longer lists the range as
//! seeding. A range waits for the sidecars at most the converge timeout after the table was
//! published (as a rebalance Job does): then the pass starts anyway and fences *both* ends at
//! the table's version, so the sidecars still behind are refused on the writer and on the
//! replica until they load it (their clients get `-TRYAGAIN` there meanwhile). The replica is
//! fenced too because a straggler's table may send it commands: a migrating table whose
//! source is now the replica runs guarded commands there once its copy holds the keys. So one
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
use crate::redis::protocol::{names, replica};
use crate::redis::serial::SerialConnection;
use crate::routing::Resolver;
use crate::routing::slots::SlotRange;
use crate::routing::table::{ReplicationMode, RoutingTable};

use super::build::replicas::{Seeded, servers};
use super::fences::raise_own_fence;

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
    /// Since when each pending range has waited for sidecars behind the published table, and
    /// that table's version: a newer table starts the wait again, so that a pass never fences
    /// sidecars that merely have not loaded a table just published.
    waiting: BTreeMap<SeedJob, (u64, Instant)>,
    /// When passes that started ahead of sidecars were last reported (a log line and an
    /// Event, at most once a minute: a failing pass is tried again every second).
    overdue_reported: Option<Instant>,
}

impl PolicySeedings {
    /// The passes of `jobs` (pending in the table at `version`) to start now, each with
    /// whether it starts ahead of sidecars still behind (`behind` of them, the converge
    /// timeout spent): those neither running nor finished, once [`may_start`] says so. A
    /// range's wait lasts while it is pending at one table version, over failed passes (both
    /// ends are fenced at that version already, so a pass tried again need not wait again);
    /// a newer table starts it again, so that no pass fences sidecars that have merely not
    /// loaded a table just published.
    fn due(
        &mut self,
        jobs: &[SeedJob],
        version: u64,
        behind: Option<usize>,
        now: Instant,
        timeout: Duration,
    ) -> Vec<(SeedJob, bool)> {
        self.waiting.retain(|j, _| jobs.contains(j));
        let mut out = Vec::new();
        for j in jobs {
            if self.running.contains_key(j) || self.done.iter().any(|d| j.finished_by(d)) {
                continue;
            }
            let wait = self.waiting.entry(j.clone()).or_insert((version, now));
            if wait.0 != version {
                *wait = (version, now);
            }
            if may_start(behind, wait.1, now, timeout) {
                out.push((j.clone(), behind.is_some_and(|n| n > 0)));
            }
        }
        out
    }
}

/// How often passes that start ahead of sidecars behind are reported.
const OVERDUE_REPORT_INTERVAL: Duration = Duration::from_secs(60);

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedingProgress {
    /// Ranges the table lists as seeding.
    pub pending: usize,
    /// Live sidecars still on a table older than the published one (no pass starts before
    /// they are on it, or until the converge timeout); `None` when no instance's heartbeats
    /// could be read (none starts then either).
    pub behind: Option<usize>,
    /// What to report (once a minute at most) of passes started this time although sidecars
    /// were behind, after the converge timeout: the ranges, the sidecars and their tables.
    pub overdue: Option<String>,
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
        let to_start: Vec<(SeedJob, bool)> = {
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
            policy.due(
                &jobs,
                table.version,
                behind,
                Instant::now(),
                converge_timeout,
            )
        };
        let mut progress = SeedingProgress {
            pending: jobs.len(),
            behind,
            overdue: None,
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
        let mut overdue_started = Vec::new();
        for (job, overdue) in to_start {
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
                    // writer is fenced at this version first, as a move fences its ends. A pass
                    // that starts ahead of sidecars still behind (the converge timeout ran
                    // out) fences the replica too: an older table may send commands there (a
                    // migrating table whose source is now the replica), which would run on
                    // the replica's copy once the pass filled it.
                    raise_own_fence(&mut w, &policy, &job.writer, version)
                        .await
                        .map_err(|e| redact(&e, &writer_target.credentials))?;
                    if overdue {
                        raise_own_fence(&mut r, &policy, &job.replica, version)
                            .await
                            .map_err(|e| redact(&e, &replica_target.credentials))?;
                    }
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
            let policy = state.entry(key.to_owned()).or_default();
            if overdue {
                overdue_started.push(format!(
                    "{} {}-{} {} → {}",
                    started_job.category,
                    started_job.range.start,
                    started_job.range.end,
                    started_job.writer,
                    started_job.replica
                ));
            }
            policy.running.insert(started_job, task.abort_handle());
        }
        if !overdue_started.is_empty() {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let policy = state.entry(key.to_owned()).or_default();
            if policy
                .overdue_reported
                .is_none_or(|at| at.elapsed() >= OVERDUE_REPORT_INTERVAL)
            {
                policy.overdue_reported = Some(Instant::now());
                let stragglers: Vec<String> = sidecars
                    .into_iter()
                    .flatten()
                    .filter(|(_, v)| **v < table.version)
                    .map(|(id, v)| format!("{id} (v{v})"))
                    .collect();
                progress.overdue = Some(format!(
                    "seeding {} after the converge timeout although sidecar(s) {} are still on an older routing table: the seeding fences them off the ranges' writers and replicas until they load v{} or later",
                    overdue_started.join(", "),
                    stragglers.join(", "),
                    table.version
                ));
            }
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(category: &str) -> SeedJob {
        SeedJob {
            category: category.to_owned(),
            replica: "secondary".to_owned(),
            writer: "primary".to_owned(),
            range: SlotRange::ALL,
            sync: true,
        }
    }

    #[test]
    fn a_ranges_wait_starts_again_with_each_table_and_lasts_over_failed_passes() {
        let mut p = PolicySeedings::default();
        let timeout = Duration::from_secs(120);
        let t0 = Instant::now();
        let auth = job("auth");
        let jobs = [auth.clone()];
        // v5 published; a sidecar stays behind.
        assert!(p.due(&jobs, 5, Some(1), t0, timeout).is_empty());
        assert!(
            p.due(&jobs, 5, Some(1), t0 + timeout / 2, timeout)
                .is_empty()
        );
        // v6 published just before the timeout would have run out: the wait starts again,
        // and the sidecars that have not loaded v6 yet are not fenced off.
        assert!(p.due(&jobs, 6, Some(3), t0 + timeout, timeout).is_empty());
        assert!(
            p.due(&jobs, 6, Some(1), t0 + timeout + timeout / 2, timeout)
                .is_empty()
        );
        // The timeout at v6 runs out: the pass starts ahead of the sidecar behind.
        assert_eq!(
            p.due(&jobs, 6, Some(1), t0 + timeout * 2, timeout),
            vec![(auth.clone(), true)]
        );
        // It failed (neither running nor done): tried again at once at the same table.
        assert_eq!(
            p.due(
                &jobs,
                6,
                Some(1),
                t0 + timeout * 2 + Duration::from_secs(1),
                timeout
            ),
            vec![(auth.clone(), true)]
        );
        // Running: not started twice.
        let handle = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { tokio::spawn(async {}).abort_handle() });
        p.running.insert(auth.clone(), handle);
        assert!(
            p.due(&jobs, 6, Some(0), t0 + timeout * 3, timeout)
                .is_empty()
        );
        p.running.clear();
        // Finished: not started again; a range no longer pending forgets its wait.
        p.done.push(auth.seeded());
        assert!(
            p.due(&jobs, 6, Some(0), t0 + timeout * 3, timeout)
                .is_empty()
        );
        assert!(p.due(&[], 7, Some(0), t0 + timeout * 3, timeout).is_empty());
        assert!(p.waiting.is_empty());
        // Every sidecar on the table: at once, and not ahead of anyone.
        let order = job("order");
        assert_eq!(
            p.due(
                std::slice::from_ref(&order),
                7,
                Some(0),
                t0 + timeout * 3,
                timeout
            ),
            vec![(order, false)]
        );
    }

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
