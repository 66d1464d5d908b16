//! Seeding replicas: a replica new to a range gets what the range's writer held before it was
//! named (`docs/replication.md`, "Repair"). The table that names it lists the range as
//! `seeding`; once every live sidecar reports that table (or a later one) — so every write from
//! then on reaches the replica — the operator fences the range's writer and replica at that
//! version (a straggler still on an older table must not write there unreplicated, nor send
//! the replica commands its table meant for a writer) and runs [`replica::repair`] from the
//! writer to the replica in a task of its own; the next table no longer lists the range as
//! seeding. A sidecar that has been stuck on one table behind the published one — whichever
//! tables were published meanwhile — for the converge timeout (as a rebalance Job waits) no
//! longer holds passes back: they start, and the fences keep it off both ends until it loads
//! the table (its clients get `-TRYAGAIN` there meanwhile). So one stuck sidecar cannot hold a
//! replica, a failback or a handover back for as long as it lives, while a sidecar that loads
//! tables late, or has not loaded one just published, is never gone ahead of.
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
    /// Per live sidecar behind the published table: the table it was on, and since when it
    /// has been on it behind, over every table published meanwhile. One that loads another
    /// table (it is making progress, however late: a mounted table lags by a minute or two)
    /// is timed afresh; one seen on the published table, or no longer live, is forgotten.
    behind_since: BTreeMap<String, (u64, Instant)>,
    /// When each pending range was last reported started ahead of sidecars behind (a log
    /// line and an Event, at most once a minute per range: a failing pass is tried again
    /// every second).
    overdue_reported: BTreeMap<SeedJob, Instant>,
}

/// Whether seeding passes may start, from the live sidecars' tables ([`PolicySeedings::gate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gate {
    /// Every live sidecar is on the published table.
    Open,
    /// Some are not, but each has been behind for the converge timeout: passes start ahead
    /// of them (named with their tables' versions).
    Overdue(Vec<(String, u64)>),
    /// Some have been behind for less than the converge timeout, or no instance's heartbeats
    /// could be read (whom a fence would keep off is unknown).
    Closed,
}

impl PolicySeedings {
    /// Notes which of the live `sidecars` (id → table version; `None`: heartbeats unread,
    /// nothing noted) are behind the published table `version` and since when, and says
    /// whether passes may start.
    fn gate(
        &mut self,
        sidecars: Option<&BTreeMap<String, u64>>,
        version: u64,
        now: Instant,
        timeout: Duration,
    ) -> Gate {
        let Some(sidecars) = sidecars else {
            return Gate::Closed;
        };
        let behind: Vec<(String, u64)> = sidecars
            .iter()
            .filter(|(_, v)| **v < version)
            .map(|(id, v)| (id.clone(), *v))
            .collect();
        self.behind_since
            .retain(|id, _| behind.iter().any(|(b, _)| b == id));
        for (id, v) in &behind {
            let since = self.behind_since.entry(id.clone()).or_insert((*v, now));
            if since.0 != *v {
                *since = (*v, now);
            }
        }
        if behind.is_empty() {
            Gate::Open
        } else if self
            .behind_since
            .values()
            .all(|(_, since)| now.saturating_duration_since(*since) >= timeout)
        {
            Gate::Overdue(behind)
        } else {
            Gate::Closed
        }
    }

    /// The passes of `jobs` (pending in the published table) to start now, as `gate` allows:
    /// those neither running nor finished.
    fn due(&self, jobs: &[SeedJob], gate: &Gate) -> Vec<SeedJob> {
        if *gate == Gate::Closed {
            return Vec::new();
        }
        jobs.iter()
            .filter(|j| !self.running.contains_key(*j))
            .filter(|j| !self.done.iter().any(|d| j.finished_by(d)))
            .cloned()
            .collect()
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
    /// they are on it, or have each been behind for the converge timeout); `None` when no
    /// instance's heartbeats could be read (none starts then either).
    pub behind: Option<usize>,
    /// What to report (once a minute at most per range) of passes started this time ahead of
    /// sidecars stuck behind for the converge timeout: the sidecars, their tables, the ranges.
    pub overdue: Option<String>,
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
    /// (live sidecar → table version) are all on it, or each one behind has been behind for
    /// `converge_timeout` ([`PolicySeedings::gate`]); forgets what finished and the table no
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
        let (to_start, gate) = {
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
            let gate = policy.gate(sidecars, table.version, Instant::now(), converge_timeout);
            policy.overdue_reported.retain(|j, _| jobs.contains(j));
            (policy.due(&jobs, &gate), gate)
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
        // The sidecars the passes go ahead of, if any.
        let stragglers = match &gate {
            Gate::Overdue(stragglers) => Some(stragglers),
            Gate::Open | Gate::Closed => None,
        };
        let mut overdue_started = Vec::new();
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
                    // Every live sidecar routes by this table — but those the gate let the pass
                    // go ahead of, and any whose heartbeats lapsed — so every write from now on
                    // reaches the replica. A straggler on an older table (a mounted table can
                    // lag by minutes) must not write on the writer unreplicated behind the pass,
                    // nor reach the replica with commands its table meant for a writer (a
                    // migrating table whose source is now the replica runs guarded commands
                    // there, on the copy the pass fills): both ends are fenced at this version
                    // first, as a move fences its ends.
                    for (conn, target, name) in [
                        (&mut w, &writer_target, &job.writer),
                        (&mut r, &replica_target, &job.replica),
                    ] {
                        raise_own_fence(conn, &policy, name, version)
                            .await
                            .map_err(|e| redact(&e, &target.credentials))?;
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
            // Reported once a minute per range: a failing pass is tried again every second.
            if stragglers.is_some()
                && policy
                    .overdue_reported
                    .get(&started_job)
                    .is_none_or(|at| at.elapsed() >= OVERDUE_REPORT_INTERVAL)
            {
                policy
                    .overdue_reported
                    .insert(started_job.clone(), Instant::now());
                overdue_started.push(format!(
                    "{} {}-{} {} -> {}",
                    started_job.category,
                    started_job.range.start,
                    started_job.range.end,
                    started_job.writer,
                    started_job.replica
                ));
            }
            policy.running.insert(started_job, task.abort_handle());
        }
        if let Some(stragglers) = stragglers
            && !overdue_started.is_empty()
        {
            progress.overdue = Some(overdue_note(stragglers, &overdue_started, table.version));
        }
        progress
    }
}

/// The report of passes (`ranges`) started ahead of `stragglers` (sidecar, table version),
/// fenced until they load `version`: the sidecars first, the ranges cut short, under the
/// 1 KiB an Event's note may hold.
fn overdue_note(stragglers: &[(String, u64)], ranges: &[String], version: u64) -> String {
    const SHOWN: usize = 8;
    let list = |items: Vec<String>, total: usize| {
        let mut text = items.join(", ");
        if total > SHOWN {
            text.push_str(&format!(" and {} more", total - SHOWN));
        }
        text
    };
    let sidecars = list(
        stragglers
            .iter()
            .take(SHOWN)
            .map(|(id, v)| format!("{id} (v{v})"))
            .collect(),
        stragglers.len(),
    );
    let ranges = list(ranges.iter().take(SHOWN).cloned().collect(), ranges.len());
    let mut note = format!(
        "sidecar(s) {sidecars} stayed on an older routing table past the converge timeout: seeding {ranges} went ahead, and fences them off the ranges' writers and replicas until they load v{version} or later"
    );
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
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
    fn a_sidecar_holds_seedings_back_only_until_it_has_been_behind_for_the_converge_timeout() {
        let mut p = PolicySeedings::default();
        let timeout = Duration::from_secs(120);
        let t0 = Instant::now();
        // What the gate says of the live sidecars `of` (id, table) at table `version`.
        let look = |p: &mut PolicySeedings, of: &[(&str, u64)], version, when| {
            let of: BTreeMap<String, u64> =
                of.iter().map(|(id, v)| ((*id).to_owned(), *v)).collect();
            p.gate(Some(&of), version, when, timeout)
        };
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // Every live sidecar on the published table: passes start at once.
        assert_eq!(look(&mut p, &[("a", 5), ("b", 5)], 5, t0), Gate::Open);
        // v6 published; b sticks on v5, a follows in a second.
        assert_eq!(look(&mut p, &[("a", 5), ("b", 5)], 6, at(0)), Gate::Closed);
        assert_eq!(look(&mut p, &[("a", 6), ("b", 5)], 6, at(1)), Gate::Closed);
        // Tables published meanwhile do not start b's wait again (b stays on v5); a, lagging
        // on each new table for a moment, is never the one passes go ahead of.
        assert_eq!(
            look(&mut p, &[("a", 6), ("b", 5)], 7, at(100)),
            Gate::Closed
        );
        assert_eq!(
            look(&mut p, &[("a", 7), ("b", 5)], 7, at(101)),
            Gate::Closed
        );
        assert_eq!(
            look(&mut p, &[("a", 7), ("b", 5)], 7, at(120)),
            Gate::Overdue(vec![("b".to_owned(), 5)])
        );
        // A table just published: a has not loaded it yet, so nothing goes ahead of a.
        assert_eq!(
            look(&mut p, &[("a", 7), ("b", 5)], 8, at(130)),
            Gate::Closed
        );
        assert_eq!(
            look(&mut p, &[("a", 8), ("b", 5)], 8, at(131)),
            Gate::Overdue(vec![("b".to_owned(), 5)])
        );
        // Heartbeats unread: nothing starts, and nothing is forgotten.
        assert_eq!(p.gate(None, 8, at(200), timeout), Gate::Closed);
        assert_eq!(
            look(&mut p, &[("a", 8), ("b", 5)], 8, at(201)),
            Gate::Overdue(vec![("b".to_owned(), 5)])
        );
        // b catches up, then falls behind again: its wait starts afresh.
        assert_eq!(look(&mut p, &[("a", 8), ("b", 8)], 8, at(202)), Gate::Open);
        assert_eq!(
            look(&mut p, &[("a", 9), ("b", 8)], 9, at(203)),
            Gate::Closed
        );
        // b gone (no longer live): forgotten.
        assert_eq!(look(&mut p, &[("a", 9)], 9, at(204)), Gate::Open);
        assert!(p.behind_since.is_empty());
        // c keeps loading tables, each later than the next one is published (a mounted table
        // lagging more than the tables come): behind at every look, yet timed afresh at each
        // table it loads, so never gone ahead of.
        assert_eq!(
            look(&mut p, &[("a", 10), ("c", 9)], 10, at(300)),
            Gate::Closed
        );
        assert_eq!(
            look(&mut p, &[("a", 11), ("c", 10)], 11, at(400)),
            Gate::Closed
        );
        assert_eq!(
            look(&mut p, &[("a", 12), ("c", 11)], 12, at(500)),
            Gate::Closed
        );
        // Once it stops (stuck on v11), the timeout counts from its last load.
        assert_eq!(
            look(&mut p, &[("a", 13), ("c", 11)], 13, at(599)),
            Gate::Closed
        );
        assert_eq!(
            look(&mut p, &[("a", 13), ("c", 11)], 13, at(620)),
            Gate::Overdue(vec![("c".to_owned(), 11)])
        );
    }

    #[test]
    fn only_ranges_neither_running_nor_finished_start_as_the_gate_allows() {
        let mut p = PolicySeedings::default();
        let (auth, order) = (job("auth"), job("order"));
        let jobs = [auth.clone(), order.clone()];
        assert!(p.due(&jobs, &Gate::Closed).is_empty());
        assert_eq!(p.due(&jobs, &Gate::Open), vec![auth.clone(), order.clone()]);
        let handle = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { tokio::spawn(async {}).abort_handle() });
        p.running.insert(auth.clone(), handle);
        p.done.push(order.seeded());
        assert!(p.due(&jobs, &Gate::Open).is_empty());
        p.running.clear();
        // A failed pass (neither running nor finished) is tried again, ahead of stragglers
        // when the gate says so.
        assert_eq!(
            p.due(&jobs, &Gate::Overdue(vec![("b".to_owned(), 5)])),
            vec![auth]
        );
    }

    #[test]
    fn the_report_names_the_sidecars_first_and_fits_an_events_note() {
        let stragglers: Vec<(String, u64)> = (0..40)
            .map(|n| (format!("app-{n}-sidecar-7f9c2b"), 3))
            .collect();
        let ranges: Vec<String> = (0..40)
            .map(|n| format!("category-{n} 0-16383 primary -> secondary"))
            .collect();
        let note = overdue_note(&stragglers, &ranges, 9);
        assert!(
            note.starts_with("sidecar(s) app-0-sidecar-7f9c2b (v3), "),
            "{note}"
        );
        assert!(note.contains("and 32 more"), "{note}");
        assert!(note.contains("until they load v9 or later"), "{note}");
        assert!(note.len() <= 1000, "{}", note.len());
    }
}
