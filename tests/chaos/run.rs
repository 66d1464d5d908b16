//! One seed: the fleet, the clients and the faults for the run's length; then the faults stop,
//! the fleet settles (no plan, no failover, every sidecar on the newest table), every key is
//! read through every sidecar, and the history is checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis_fleet::api::cache_policy::rebalance_phase;
use redis_fleet::api::redis_instance::InstancePhase;
use redis_fleet::routing::Resolver;
use redis_fleet::routing::table::ReplicationMode;

use crate::faults::{self, Counts};
use crate::fleet::{
    ASYNC_CATEGORY, Fleet, ReplicationSample, deliver, lock, observe, resume_all, watch_replication,
};
use crate::history::{self, KeyHistory, Outcome, Report, State, Tolerance, Write};
use crate::rng::Rng;
use crate::workload::{
    self, KeySpec, Log, Shared, TTL_EARLY_MS, TTL_LATE_MS, TtlReport, check_ttls, final_reads,
    keyspace,
};

/// File sidecars beside the one that follows the API.
const FILE_SIDECARS: usize = 2;
/// Readers beside the writers (one writer per sidecar).
const READERS: usize = 2;
/// The longest the fleet may take to settle once the faults stop.
const SETTLE_BOUND: Duration = Duration::from_secs(300);
/// How long a key's possible homes are looked back on from an outage.
const LOOK_BACK_NS: u64 = 150_000_000_000;

/// What one seed did and what the checker found.
#[derive(Debug)]
pub struct Row {
    /// The seed.
    pub seed: u64,
    /// Seconds of faults.
    pub seconds: u64,
    /// Operations the clients sent.
    pub ops: u64,
    /// Of those, answered after more than five seconds.
    pub slow: u64,
    /// Examples of those.
    pub slow_examples: Vec<String>,
    /// The history's verdict.
    pub history: Report,
    /// The final reads' TTLs.
    pub ttl: TtlReport,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Errors no client should see (neither retryable, nor a timeout, nor `-NOREPLICA`).
    pub fatal: u64,
    /// Examples of those.
    pub fatal_examples: Vec<String>,
    /// Keys a sidecar could not read after the fleet settled.
    pub unreadable: Vec<String>,
    /// How long the fleet took to settle, or why it did not.
    pub settled: Result<Duration, String>,
    /// Plans seen, and how many succeeded.
    pub plans: (u64, u64),
    /// Job pods run, and how many did not exit 0.
    pub pods: (u64, u64),
    /// Faults injected.
    pub faults: Counts,
    /// Times an instance was declared unreachable.
    pub failovers: u64,
    /// Keys of the `async` category that a failover handed to their replica, and of their
    /// acknowledged writes those that the sidecars' reports left at risk (the checker allows
    /// the replica to miss only these).
    pub async_takeovers: (u64, u64),
    /// Replicas that moved seed-first: the distinct (category, outgoing instance) pairs the
    /// published tables named (`docs/replication.md`, "Moving replicas").
    pub replica_moves: usize,
    /// Failovers of `Sync` ranges that ended by swapping roles: the owner serves again and the
    /// range has a seeded replica — the instance that served it, or the outgoing replica that
    /// stayed on beside the owner (`docs/replication.md`).
    pub swaps: usize,
    /// Replicated ranges a plan moved by handing them over (`docs/replication.md`, "Moves that
    /// hand over"): distinct handover entries named by the tables, and of them those that
    /// ended by swapping roles (the rest were given back, or are under way).
    pub handed_over: (usize, usize),
    /// Of [`Row::handed_over`]'s entries, those of the `async` category.
    pub async_handed_over: usize,
    /// Where the logs of a failed seed were kept.
    pub logs: Option<PathBuf>,
    /// A failed seed's evidence, printed with its details ([`diagnose`]).
    pub diagnosis: Vec<String>,
}

impl Row {
    /// Nothing lost, stale, resurrected, invented, mistimed or refused.
    pub fn clean(&self) -> bool {
        self.history.clean()
            && self.ttl.violations() == 0
            && self.fatal == 0
            && self.unreadable.is_empty()
            && self.settled.is_ok()
    }

    /// Errors the faults may cause: retryable ones, timeouts, `-NOREPLICA`.
    pub fn retryable(&self) -> u64 {
        self.errors.values().sum::<u64>() - self.fatal
    }
}

/// Runs seed `seed` with `seconds` of faults.
pub async fn run_seed(seed: u64, seconds: u64) -> Row {
    let rng = Rng::new(seed);
    let fleet = Arc::new(Fleet::start(FILE_SIDECARS).await);
    eprintln!(
        "seed {seed}: namespace {}, {} sidecars, {} s of faults",
        fleet.ns,
        fleet.sidecars.len(),
        seconds
    );
    let table = fleet.table().await.expect("a routing table");
    let resolver = Resolver::new(table).expect("a valid routing table");
    let writers = fleet.sidecars.len();
    let shared = Arc::new(Shared {
        keys: keyspace(writers, &resolver),
        ports: fleet.sidecars.iter().map(|s| s.port).collect(),
        clock: fleet.clock,
        stop: Default::default(),
    });
    let mut background = vec![
        tokio::spawn(observe(fleet.clone())),
        tokio::spawn(watch_replication(fleet.clone())),
    ];
    for i in (0..fleet.sidecars.len()).filter(|i| fleet.sidecars[*i].file) {
        background.push(tokio::spawn(deliver(
            fleet.clone(),
            i,
            rng.fork(100 + i as u64),
        )));
    }
    let mut clients = Vec::new();
    for w in 0..writers {
        clients.push(tokio::spawn(workload::writer(
            shared.clone(),
            w,
            rng.fork(200 + w as u64),
        )));
    }
    for r in 0..READERS {
        clients.push(tokio::spawn(workload::reader(
            shared.clone(),
            rng.fork(300 + r as u64),
        )));
    }

    let until = Instant::now() + Duration::from_secs(seconds);
    let faults = faults::inject(fleet.clone(), rng.fork(1), until).await;
    eprintln!(
        "seed {seed}: faults over at {:.0} s: {faults:?}",
        fleet.clock.secs()
    );
    fleet.settling.store(true, Ordering::SeqCst);
    resume_all(&fleet);
    let settled = settle(&fleet, SETTLE_BOUND).await;
    eprintln!(
        "seed {seed}: settled: {:?} at {:.0} s",
        settled.as_ref().map(|d| d.as_secs()),
        fleet.clock.secs()
    );
    shared.stop.store(true, Ordering::SeqCst);
    let mut log = Log::default();
    for c in clients {
        log.merge(c.await.expect("a client task"));
    }
    let (last_reads, finals, unreadable) = final_reads(&shared).await;
    fleet.stop.store(true, Ordering::SeqCst);
    for b in background {
        let _ = b.await;
    }

    let mut histories: BTreeMap<String, KeyHistory> = BTreeMap::new();
    let name = |k: usize| shared.keys[k].name.clone();
    for (k, w) in log.writes.drain(..) {
        histories.entry(name(k)).or_default().writes.push(w);
    }
    for (k, r) in log.reads.drain(..).chain(last_reads) {
        histories.entry(name(k)).or_default().reads.push(r);
    }
    for h in histories.values_mut() {
        h.writes.sort_by_key(|w| w.start);
    }
    // A failover's drop stands after the writes that started before it was surely published.
    let withdrawn = withdrawals(&fleet).await;
    for w in &withdrawn {
        eprintln!(
            "seed {seed}: failover notice of {} withdrawn at version {}",
            w.instances.join(", "),
            w.version
        );
    }
    let (failovers, mut drops, warm_async) = failover_drops(&fleet, &shared.keys, &withdrawn);
    // An `async` key its replica took over may have lost what its sidecars reported at risk.
    let at_risk = AtRisk::reported(&lock(&fleet.replication));
    let mut async_takeovers = (warm_async.len() as u64, 0);
    // Keys whose replica may miss a write or an expiry: their final TTL may be an older one.
    let mut reverted = std::collections::BTreeSet::new();
    for (k, window) in warm_async {
        let Some(h) = histories.get(&name(k)) else {
            continue;
        };
        let (reverts, risky) = at_risk.reverts(&h.writes, &window);
        async_takeovers.1 += risky;
        // An `EXPIRE` at risk leaves no value to tell by: its TTL may be missing too.
        if !reverts.is_empty() || at_risk.any_before(window.stands) {
            reverted.insert(k);
        }
        drops.extend(reverts.into_iter().map(|w| (k, window.stands, w)));
    }
    for (k, stands, d) in drops {
        stand(&mut histories.entry(name(k)).or_default().writes, stands, d);
    }
    let tolerance = Tolerance {
        late: TTL_LATE_MS * 1_000_000,
        early: TTL_EARLY_MS * 1_000_000,
    };
    let history = history::check(&histories, tolerance);
    let last: BTreeMap<usize, _> = log
        .last
        .iter()
        .filter(|(k, _, _)| !reverted.contains(k))
        .map(|(k, s, t)| (*k, (s.clone(), *t)))
        .collect();
    let ttl = check_ttls(&shared.keys, &last, &finals);

    let plans = lock(&fleet.plans);
    let succeeded = plans
        .values()
        .filter(|r| r.phase == rebalance_phase::SUCCEEDED)
        .count() as u64;
    let finished = lock(&fleet.node.finished);
    let failed_pods = finished.iter().filter(|(_, code)| *code != 0).count() as u64;
    // One lock for both: a second `lock` in the same expression would wait for the first.
    let (replica_moves, swaps, handed_over, async_handed_over) = {
        let tables = lock(&fleet.tables);
        let (swaps, handovers_swapped) = swaps(&tables);
        let entries = handed_over(&tables);
        (
            replica_moves(&tables),
            swaps,
            (entries.len(), handovers_swapped),
            entries
                .iter()
                .filter(|(category, ..)| *category == ASYNC_CATEGORY)
                .count(),
        )
    };
    let mut row = Row {
        seed,
        seconds,
        ops: log.ops,
        slow: log.slow,
        slow_examples: log.slow_examples,
        history,
        ttl,
        errors: log.errors,
        fatal: log.fatal,
        fatal_examples: log.fatal_examples,
        unreadable,
        settled,
        plans: (plans.len() as u64, succeeded),
        pods: (finished.len() as u64, failed_pods),
        faults,
        failovers,
        async_takeovers,
        replica_moves,
        swaps,
        handed_over,
        async_handed_over,
        logs: None,
        diagnosis: Vec::new(),
    };
    drop((plans, finished));
    if !row.clean() {
        row.diagnosis = diagnose(&fleet, &row.history);
    }
    // `CHAOS_KEEP_LOGS=1` keeps a clean seed's logs too (to read a timeline that worked).
    if !row.clean() || std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
        row.logs = keep_logs(&fleet, seed);
        if let Some(dir) = &row.logs {
            let dump: Vec<String> = row
                .history
                .keys
                .iter()
                .filter_map(|k| histories.get(k).map(|h| describe(k, h)))
                .collect();
            let _ = std::fs::write(dir.join("histories.txt"), dump.join("\n"));
        }
    }
    let _ = fleet
        .cp
        .kubectl()
        .args(["delete", "namespace", &fleet.ns, "--wait=false"])
        .output();
    row
}

/// Waits until no plan runs, nothing is failed over or migrating, every instance serves and
/// every sidecar routes by the newest table — and all of it for five seconds.
async fn settle(fleet: &Fleet, bound: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut steady: Option<(Instant, u64)> = None;
    loop {
        let idle = fleet.wait_idle(Duration::ZERO, |_| true).await;
        let versions = fleet.sidecar_versions().await;
        let phases: Vec<(String, Option<InstancePhase>)> = fleet
            .instances
            .list(&Default::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|ri| {
                        (
                            ri.metadata.name.unwrap_or_default(),
                            ri.status.and_then(|s| s.phase),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let serving = phases.iter().all(|(_, p)| {
            matches!(
                p,
                Some(InstancePhase::Ready | InstancePhase::Degraded | InstancePhase::Draining)
            )
        });
        match &idle {
            Ok(t) if serving && versions.iter().all(|v| *v == t.version) => match steady {
                Some((since, v)) if v == t.version => {
                    if since.elapsed() >= Duration::from_secs(5) {
                        return Ok(start.elapsed());
                    }
                }
                _ => steady = Some((Instant::now(), t.version)),
            },
            _ => steady = None,
        }
        if start.elapsed() > bound {
            return Err(format!(
                "not settled after {bound:?}: sidecars on {versions:?}, instances {phases:?}, {}",
                idle.err().unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A failover notice the operator withdrew: every instance it named answered again within its
/// wait, and the routing in force went out again at `version` (a `FailoverWithdrawn` Event).
#[derive(Debug, Clone)]
struct Withdrawal {
    instances: Vec<String>,
    version: u64,
}

/// The failover notices withdrawn during the run, from the policy's Events.
async fn withdrawals(fleet: &Fleet) -> Vec<Withdrawal> {
    use k8s_openapi::api::events::v1::Event;
    let events: kube::Api<Event> =
        kube::Api::namespaced(fleet.policies.clone().into_client(), &fleet.ns);
    let Ok(list) = events.list(&Default::default()).await else {
        eprintln!("the Events could not be listed: withdrawn failover notices unknown");
        return Vec::new();
    };
    list.items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailoverWithdrawn"))
        .filter_map(|e| parse_withdrawal(e.note.as_deref()?))
        .collect()
}

/// A `FailoverWithdrawn` Event's note: "a, b answered again within … at version 12)".
fn parse_withdrawal(note: &str) -> Option<Withdrawal> {
    let (names, _) = note.split_once(" answered again")?;
    let (_, tail) = note.rsplit_once("at version ")?;
    let version = tail
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some(Withdrawal {
        instances: names.split(", ").map(str::to_owned).collect(),
        version,
    })
}

/// The failovers of the run, and for each the keys whose data the dead instance may have held
/// alone, with a possible drop (a delete of unknown outcome): the one loss `docs/protocol.md`
/// allows. The drop stands where the failover table was surely published — until then the
/// instance may acknowledge writes (a stopped Redis runs what waits in its input buffer as
/// soon as it is continued), and those go with it — and reads may see it from the moment the
/// table may have been published; when no failover table was seen, from the operator's verdict
/// to two seconds after it. A failover whose notice was `withdrawn` (the instance kept its
/// ranges and its data) drops nothing, unless a table after that withdrawal fails the instance
/// over after all (it stopped again before it was `Ready`).
fn failover_drops(
    fleet: &Fleet,
    keys: &[KeySpec],
    withdrawn: &[Withdrawal],
) -> (u64, Drops, Vec<(usize, Window)>) {
    let phases = lock(&fleet.phases).clone();
    let tables = lock(&fleet.tables).clone();
    let mut failovers = 0;
    let mut drops = Vec::new();
    let mut warm_async = Vec::new();
    for (i, p) in phases.iter().enumerate() {
        if p.phase != InstancePhase::Unreachable {
            continue;
        }
        failovers += 1;
        let end = phases[i + 1..]
            .iter()
            .find(|q| q.instance == p.instance)
            .map_or(p.at, |q| q.at);
        // The table that failed it over: new failover entries from it, or fewer migrations
        // to or from it (a plan abandoned toward the live side), or fewer slots it serves.
        let failed_over = |t: &redis_fleet::routing::RoutingTable| {
            t.failover.iter().filter(|f| f.from == p.instance).count()
        };
        let migrating = |t: &redis_fleet::routing::RoutingTable| {
            t.migrating
                .iter()
                .filter(|m| m.from == p.instance || m.to == p.instance)
                .count()
        };
        // Or, after the verdict, fewer slots served by it without a failover entry (a
        // draining instance's ranges handed to their new owner).
        let served = |t: &redis_fleet::routing::RoutingTable| -> u32 {
            redis_fleet::operator::cache_policy::build::served_ranges(t)
                .get(&p.instance)
                .map_or(0, |ranges| ranges.iter().map(|(_, r)| r.len()).sum())
        };
        // Its next outage: the notice of this one is withdrawn, if at all, before it. (Not its
        // return: the instance is `Ready` two probes after it answers again, while the
        // withdrawal goes out only when the notice's wait ends, seconds later.)
        let next_outage = phases[i + 1..]
            .iter()
            .find(|q| q.instance == p.instance && q.phase == InstancePhase::Unreachable)
            .map_or(u64::MAX, |q| q.at);
        // The latest notice naming it withdrawn during this outage (its table seen from a
        // little before the verdict to the next outage).
        let withdrawal = withdrawn
            .iter()
            .filter(|w| w.instances.contains(&p.instance))
            .filter(|w| {
                tables
                    .iter()
                    .find(|t| t.table.version >= w.version)
                    .is_some_and(|t| t.at + 2_000_000_000 >= p.at && t.after < next_outage)
            })
            .map(|w| w.version)
            .max();
        let position = tables.windows(2).position(|w| {
            if let Some(v) = withdrawal {
                // Only a failover after the withdrawal (and before the next outage, which has
                // drops of its own) drops anything.
                return w[1].table.version > v
                    && w[1].after < next_outage
                    && failed_over(&w[1].table) > failed_over(&w[0].table);
            }
            w[1].at + 2_000_000_000 >= p.at
                && (failed_over(&w[1].table) > failed_over(&w[0].table)
                    || migrating(&w[1].table) < migrating(&w[0].table)
                    || (w[1].at >= p.at && served(&w[1].table) < served(&w[0].table)))
        });
        if position.is_none() && withdrawal.is_some() {
            continue;
        }
        let window = position.map(|i| &tables[i..i + 2]);
        // Where the table before named the `async` category `Sync` (a range of it handed over,
        // or failing back by swapping roles): since when the tables in a row did, plus the
        // time sidecars take to load one. A write sent after that was acknowledged `Sync`, and
        // must be on the replica whatever the sidecars reported.
        let sync_since = position.and_then(|i| {
            let sync = |t: &crate::fleet::Published| {
                t.table
                    .category(ASYNC_CATEGORY)
                    .and_then(|c| c.replication.as_ref())
                    .is_some_and(|r| r.mode == ReplicationMode::Sync)
            };
            let first = tables[..=i]
                .iter()
                .rposition(|t| !sync(t))
                .map_or(0, |j| j + 1);
            (first <= i).then(|| tables[first].at + TABLE_LOADED_NS)
        });
        let published = window.map(|w| (w[1].after, w[1].at));
        // A replicated key that the failover table serves from the replica the table before
        // named for it, seeded (or outgoing), and that served it: nothing of it is dropped
        // (`docs/replication.md`).
        let resolvers = window.and_then(|w| {
            Some((
                &w[0].table,
                Resolver::new(w[0].table.clone()).ok()?,
                Resolver::new(w[1].table.clone()).ok()?,
            ))
        });
        // Whether a key is served warm, and whether its category is `async`.
        let warm = |name: &str| -> Option<bool> {
            let Some((table, before, after)) = &resolvers else {
                return None;
            };
            let route = before.resolve(name.as_bytes());
            if before.instance_name(route.target) != p.instance || route.migration.is_some() {
                return None;
            }
            let Some((mode, Some(replica))) = before.replication(&route) else {
                return None;
            };
            let replica = before.instance_name(replica);
            let category = &before.categories()[usize::from(route.category)].name;
            let seeding = table
                .category(category)
                .and_then(|c| c.replication.as_ref())
                .is_some_and(|r| {
                    r.seeding
                        .iter()
                        .any(|s| s.range.contains(route.slot) && s.instance == replica)
                });
            // Or from the outgoing replica (seeded) that a seeding one replaces.
            let outgoing = before.outgoing(&route).map(|o| before.instance_name(o));
            let now = after.resolve(name.as_bytes());
            let server = after.instance_name(now.target);
            // The `Async` category's keys get its rule, even where the table before was `Sync`
            // for it (a range of it was handed over): writes acknowledged before that table
            // may still have been on their way to the replica.
            ((!seeding && server == replica) || outgoing == Some(server))
                .then_some(mode == ReplicationMode::Async || category == ASYNC_CATEGORY)
        };
        // Published between `start` and `stands`.
        let (start, stands) = published.unwrap_or((p.at, p.at + 2_000_000_000));
        // Every table that may have placed data on it: those published from a while before
        // the outage to its end, and the one in force before them.
        let from = stands.saturating_sub(LOOK_BACK_NS);
        let first = tables.iter().rposition(|t| t.at <= from).unwrap_or(0);
        let mut homes = vec![false; keys.len()];
        for t in tables[first..]
            .iter()
            .filter(|t| t.at <= end + 10_000_000_000)
        {
            let Ok(resolver) = Resolver::new(t.table.clone()) else {
                continue;
            };
            for (k, spec) in keys.iter().enumerate() {
                let route = resolver.resolve(spec.name.as_bytes());
                homes[k] |= [Some(route.owner), Some(route.target), route.migrating_from]
                    .into_iter()
                    .flatten()
                    .any(|id| resolver.instance_name(id) == p.instance);
            }
        }
        for (k, on) in homes.into_iter().enumerate() {
            if !on {
                continue;
            }
            let warm = warm(&keys[k].name);
            if warm == Some(true) {
                warm_async.push((
                    k,
                    Window {
                        start,
                        stands,
                        end: end.max(stands),
                        sync_since,
                    },
                ));
            }
            if warm.is_none() {
                drops.push((
                    k,
                    stands,
                    Write {
                        start,
                        end: end.max(stands),
                        after: State::Absent,
                        outcome: Outcome::Unknown,
                        via: usize::MAX,
                        expires: None,
                        dropped: true,
                    },
                ));
            }
        }
    }
    (failovers, drops, warm_async)
}

/// The distinct (category, instance) pairs of outgoing replicas in `tables`.
fn replica_moves(tables: &[crate::fleet::Published]) -> usize {
    let pairs: std::collections::BTreeSet<(&str, &str)> = tables
        .iter()
        .flat_map(|p| &p.table.categories)
        .filter_map(|c| Some((c.name.as_str(), c.replication.as_ref()?)))
        .flat_map(|(name, r)| r.outgoing.iter().map(move |o| (name, o.instance.as_str())))
        .collect();
    pairs.len()
}

/// A handover entry: category, first and last slot, target, source.
type HandoverEntry<'t> = (&'t str, u16, u16, &'t str, &'t str);

/// The distinct handover entries of `tables`.
fn handed_over(
    tables: &[crate::fleet::Published],
) -> std::collections::BTreeSet<HandoverEntry<'_>> {
    tables
        .iter()
        .flat_map(|p| &p.table.failover)
        .filter(|f| f.handover)
        .map(|f| {
            (
                f.category.as_str(),
                f.start,
                f.end,
                f.from.as_str(),
                f.to.as_str(),
            )
        })
        .collect()
}

/// The failover and handover entries that a table of `tables` ended by swapping roles: gone
/// from the next table, whose owner of the range serves it, with a seeded replica (the entry's
/// server, or the outgoing replica that stayed on beside the owner).
fn swaps(tables: &[crate::fleet::Published]) -> (usize, usize) {
    let ended: Vec<&redis_fleet::routing::table::Failover> = tables
        .windows(2)
        .flat_map(|pair| {
            let (before, after) = (&pair[0].table, &pair[1].table);
            before
                .failover
                .iter()
                .filter(|f| !after.failover.contains(f))
                .filter(|f| {
                    let Some(cat) = after.category(&f.category) else {
                        return false;
                    };
                    let Some(r) = &cat.replication else {
                        return false;
                    };
                    let owners = cat.owners();
                    let covers = |runs: &[redis_fleet::routing::table::SlotOwner], slot: u16| {
                        runs.iter()
                            .any(|o| o.instance != f.from && o.range.contains(slot))
                    };
                    (f.start..=f.end).all(|slot| {
                        owners[usize::from(slot)] == f.from
                            && covers(&r.replicas, slot)
                            && !covers(&r.seeding, slot)
                            && !after.failover.iter().any(|g| {
                                g.category == f.category && g.start <= slot && slot <= g.end
                            })
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let handovers = ended.iter().filter(|f| f.handover).count();
    (ended.len() - handovers, handovers)
}

/// Puts a write of the harness (a drop) where it stands: after the writes that started before
/// `stands`.
fn stand(writes: &mut Vec<Write>, stands: u64, drop: Write) {
    let at = writes
        .iter()
        .position(|w| !w.dropped && w.start > stands)
        .unwrap_or(writes.len());
    writes.insert(at, drop);
}

/// A failover's possible drops: (key, where it stands, the drop).
type Drops = Vec<(usize, u64, Write)>;

/// When a failover happened: published between `start` and `stands`; its instance was back
/// (or the run over) at `end`.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    stands: u64,
    end: u64,
    /// Writes sent after this were acknowledged `Sync` (see `failover_drops`).
    sync_since: Option<u64>,
}

/// How long after a table is seen published every sidecar surely routes by it (they watch the
/// ConfigMap; a restarted one reads it first).
const TABLE_LOADED_NS: u64 = 3_000_000_000;

/// Some slack around the moments the harness reads, for the time between a sidecar's clock
/// reading and a client's.
const SLACK_NS: u64 = 5_000_000;

/// The writes whose `async` result may be missing on their replica, by what the sidecars
/// reported (`docs/replication.md`): per sidecar, the spans in which it counted a replica
/// failure of the category, or was killed with results on their way. A result still in
/// flight was answered at most `replication_backlog_age_seconds` before a scrape, so a span
/// begins that long before the scrape that preceded the failure (or the kill); a scrape that
/// found results on their way makes a span of that age (they may not have arrived when the
/// replica took over; `docs/replication.md` promises only what is older). The writer
/// answered a write between the client's sending it and its reply: the write is at risk when
/// that time meets a span.
struct AtRisk {
    spans: BTreeMap<usize, Vec<(u64, u64)>>,
}

impl AtRisk {
    fn reported(samples: &[ReplicationSample]) -> AtRisk {
        let mut by_sidecar: BTreeMap<usize, Vec<&ReplicationSample>> = BTreeMap::new();
        for s in samples {
            by_sidecar.entry(s.sidecar).or_default().push(s);
        }
        let mut spans: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
        for (sidecar, mut samples) in by_sidecar {
            samples.sort_by_key(|s| s.asked);
            let from = |s: &ReplicationSample| s.asked.saturating_sub(s.backlog_age + SLACK_NS);
            for pair in samples.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                // A failure counted, or a process killed with results on their way.
                if a.generation != b.generation || a.failures != b.failures {
                    spans.entry(sidecar).or_default().push((from(a), b.at));
                }
            }
            // Results on their way when asked: answered at most their age before.
            for a in samples.iter().filter(|s| s.backlog_age > 0) {
                spans.entry(sidecar).or_default().push((from(a), a.at));
            }
            // Failures counted (or a kill) after the last sample.
            if let Some(last) = samples.last() {
                spans
                    .entry(sidecar)
                    .or_default()
                    .push((from(last), u64::MAX));
            }
        }
        AtRisk { spans }
    }

    /// Whether `w`'s result may be missing on its replica (or still on its way).
    fn risky(&self, w: &Write) -> bool {
        self.spans
            .get(&w.via)
            .is_some_and(|s| s.iter().any(|&(a, b)| a <= w.end && w.start <= b))
    }

    /// Whether any sidecar reported something at risk before `t`.
    fn any_before(&self, t: u64) -> bool {
        self.spans.values().flatten().any(|&(a, _)| a < t)
    }

    /// What a replica that took over a key at `window` may hold instead of its latest write:
    /// the state of the last write it surely got, or of any write after that one whose result
    /// was at risk — each as a possible write of the harness (like a drop). Also how many
    /// acknowledged writes were at risk.
    fn reverts(&self, writes: &[Write], window: &Window) -> (Vec<Write>, u64) {
        let before: Vec<&Write> = writes
            .iter()
            .filter(|w| !w.dropped && w.start < window.stands)
            .collect();
        // The last write surely on the replica: acknowledged before the failover table could
        // be out (later ones may have run on the replica itself, after the reads that missed
        // an earlier one), and not at risk.
        // A write acknowledged `Sync` is never at risk.
        let at_risk =
            |w: &Write| self.risky(w) && window.sync_since.is_none_or(|since| w.start <= since);
        let safe = before
            .iter()
            .rposition(|w| w.outcome == Outcome::Ok && w.end < window.start && !at_risk(w));
        let after_safe = &before[safe.map_or(0, |i| i + 1)..];
        let risky = after_safe
            .iter()
            .filter(|w| w.outcome == Outcome::Ok && at_risk(w))
            .count() as u64;
        if !after_safe.iter().any(|w| at_risk(w)) {
            return (Vec::new(), 0);
        }
        let revert = |after: State, expires| Write {
            start: window.start,
            end: window.end,
            after,
            outcome: Outcome::Unknown,
            via: usize::MAX,
            expires,
            dropped: true,
        };
        let mut out = vec![match safe {
            Some(i) => revert(before[i].after.clone(), before[i].expires),
            None => revert(State::Absent, None),
        }];
        out.extend(
            after_safe
                .iter()
                .map(|w| revert(w.after.clone(), w.expires)),
        );
        (out, risky)
    }
}

/// Nanoseconds of the test clock in seconds, for reports.
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// How far before and after the first broken rule [`diagnose`]'s timeline reaches (ns).
const TIMELINE_BEFORE_NS: u64 = 15_000_000_000;
const TIMELINE_AFTER_NS: u64 = 5_000_000_000;

/// A failed seed's evidence, short enough for a CI log whose files are gone: how many keys
/// broke a rule, the first one's route in every table (when it changed), and what the faults,
/// plans, instances and tables did around the first broken rule.
fn diagnose(fleet: &Fleet, report: &Report) -> Vec<String> {
    let mut out = vec![format!(
        "{} keys broke a rule: {}",
        report.keys_violated,
        report
            .keys
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    )];
    let tables = lock(&fleet.tables).clone();
    if let Some(key) = report.keys.first() {
        let mut last = String::new();
        for t in &tables {
            let Ok(resolver) = Resolver::new(t.table.clone()) else {
                continue;
            };
            let route = resolver.resolve(key.as_bytes());
            let name = |id| resolver.instance_name(id).to_owned();
            let now = format!(
                "slot {} owner {}, served by {}{}",
                route.slot,
                name(route.owner),
                name(route.target),
                route
                    .migrating_from
                    .map(|f| format!(", migrating from {}", name(f)))
                    .unwrap_or_default()
            );
            if now != last {
                out.push(format!(
                    "{:8.3} s  v{}: {key}: {now}",
                    secs(t.at),
                    t.table.version
                ));
                last = now;
            }
        }
    }
    let Some(first) = report.first_at else {
        return out;
    };
    let window = first.saturating_sub(TIMELINE_BEFORE_NS)..first + TIMELINE_AFTER_NS;
    let mut timeline: Vec<(u64, String)> = lock(&fleet.events).clone();
    timeline.extend(
        tables
            .iter()
            .map(|t| (t.at, format!("table v{} seen", t.table.version))),
    );
    timeline.extend(
        lock(&fleet.phases)
            .iter()
            .map(|p| (p.at, format!("{} {:?}", p.instance, p.phase))),
    );
    for p in lock(&fleet.pauses).iter() {
        timeline.push((p.stop, format!("{} SIGSTOP", p.instance)));
        timeline.push((p.cont, format!("{} SIGCONT", p.instance)));
    }
    timeline.push((first, "← the first read that broke a rule began".to_owned()));
    timeline.retain(|(at, _)| window.contains(at));
    timeline.sort_by_key(|(at, _)| *at);
    out.extend(
        timeline
            .into_iter()
            .map(|(at, what)| format!("{:8.3} s  {what}", secs(at))),
    );
    out
}

/// Copies the logs of the operator, the sidecars, the Job pods and the redis-servers to
/// `target/chaos/seed-<seed>/` (the temporary originals go when the test binary exits).
fn keep_logs(fleet: &Fleet, seed: u64) -> Option<PathBuf> {
    let dir = crate::support::control_plane::project_root()
        .join("target/chaos")
        .join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let copy = |from: &Path, to: &str| {
        let _ = std::fs::copy(from, dir.join(to));
    };
    let _ = std::fs::write(
        dir.join("clock.txt"),
        format!("0 s of the test clock = {}\n", fleet.clock.began()),
    );
    for (i, log) in lock(&fleet.operator_logs).iter().enumerate() {
        copy(log, &format!("operator-{}.log", i + 1));
    }
    for s in &fleet.sidecars {
        copy(&lock(&s.process).log(), &format!("sidecar-{}.log", s.name));
    }
    for m in lock(&fleet.members).iter() {
        copy(
            &m.server.dir.join("redis.log"),
            &format!("redis-{}.log", m.name),
        );
    }
    if let Ok(pods) = std::fs::read_dir(&fleet.node.logs) {
        for p in pods.flatten() {
            copy(
                &p.path(),
                &format!("job-{}", p.file_name().to_string_lossy()),
            );
        }
    }
    let tables: Vec<String> = lock(&fleet.tables)
        .iter()
        .map(|t| format!("{:.3} s: {}", t.at as f64 / 1e9, t.table.to_json()))
        .collect();
    let _ = std::fs::write(dir.join("tables.txt"), tables.join("\n"));
    let phases: Vec<String> = lock(&fleet.phases)
        .iter()
        .map(|p| format!("{:.3} s: {} {:?}", p.at as f64 / 1e9, p.instance, p.phase))
        .collect();
    let _ = std::fs::write(dir.join("phases.txt"), phases.join("\n"));
    let events: Vec<String> = lock(&fleet.events)
        .iter()
        .map(|(at, what)| format!("{:.3} s: {what}", secs(*at)))
        .collect();
    let _ = std::fs::write(dir.join("events.txt"), events.join("\n"));
    let pauses: Vec<String> = lock(&fleet.pauses)
        .iter()
        .map(|p| {
            format!(
                "{}: {:.3} .. {:.3} s",
                p.instance,
                p.stop as f64 / 1e9,
                p.cont as f64 / 1e9
            )
        })
        .collect();
    let _ = std::fs::write(dir.join("pauses.txt"), pauses.join("\n"));
    let memory: Vec<String> = lock(&fleet.memory)
        .iter()
        .map(|(at, m)| format!("{:.3} s: {m}", *at as f64 / 1e9))
        .collect();
    let _ = std::fs::write(dir.join("memory.txt"), memory.join("\n"));
    let plans = format!("{:#?}", lock(&fleet.plans));
    let _ = std::fs::write(dir.join("plans.txt"), plans);
    // Job pods still running at the end: where each thread waits.
    for (pod, pid) in fleet.node.running() {
        let stacks = std::process::Command::new("gdb")
            .args([
                "-batch",
                "-p",
                &pid.to_string(),
                "-ex",
                "thread apply all bt",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("gdb: {e}"));
        let sockets = std::process::Command::new("ss")
            .args(["-tnp"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(&format!("pid={pid},")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let _ = std::fs::write(
            dir.join(format!("running-{pod}.txt")),
            format!("sockets:\n{sockets}\n\nstacks:\n{stacks}"),
        );
    }
    Some(dir)
}

/// One key's history, every event in time order, for a failed seed's logs.
fn describe(key: &str, h: &KeyHistory) -> String {
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut events: Vec<(u64, String)> = Vec::new();
    for (i, w) in h.writes.iter().enumerate() {
        events.push((
            w.start,
            if w.dropped {
                format!("#{i} failover drop possible from {:.3} s", secs(w.start))
            } else {
                format!(
                    "#{i} write {:?} {:?} via {} {:.3}..{:.3} s{}",
                    w.after,
                    w.outcome,
                    w.via,
                    secs(w.start),
                    secs(w.end),
                    w.expires.map_or(String::new(), |e| format!(
                        " expires {:.3}..{:.3}",
                        secs(e.earliest),
                        secs(e.latest)
                    ))
                )
            },
        ));
    }
    for r in &h.reads {
        events.push((
            r.start,
            format!(
                "   {} saw {:?} via {} {:.3}..{:.3} s",
                if r.before.is_some() {
                    "reply"
                } else if r.last {
                    "final read"
                } else {
                    "read"
                },
                r.saw,
                r.via,
                secs(r.start),
                secs(r.end)
            ),
        ));
    }
    events.sort_by_key(|(t, _)| *t);
    let lines: Vec<String> = events.into_iter().map(|(_, e)| e).collect();
    format!("== {key}\n{}\n", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_withdrawn_notice_is_read_from_its_event_s_note() {
        // The note as the operator writes it.
        let note = redis_fleet::operator::cache_policy::apply::withdrawal_note(
            &["primary".to_owned(), "tertiary".to_owned()],
            17,
        );
        let w = parse_withdrawal(&note).unwrap();
        assert_eq!(w.instances, ["primary", "tertiary"]);
        assert_eq!(w.version, 17);
        assert!(parse_withdrawal("the routing table changed").is_none());
    }

    fn set(value: &str, at_ms: u64, via: usize) -> Write {
        Write {
            start: at_ms * MS,
            end: (at_ms + 1) * MS,
            after: State::Value(value.to_owned()),
            outcome: Outcome::Ok,
            via,
            expires: None,
            dropped: false,
        }
    }

    fn read(saw: &str, at_ms: u64) -> crate::history::Read {
        crate::history::Read {
            start: at_ms * MS,
            end: (at_ms + 1) * MS,
            saw: State::Value(saw.to_owned()),
            via: 0,
            last: false,
            before: None,
        }
    }

    fn sample(sidecar: usize, at_ms: u64, failures: u64) -> ReplicationSample {
        ReplicationSample {
            sidecar,
            asked: at_ms * MS,
            at: at_ms * MS + MS / 2,
            generation: 0,
            failures,
            backlog_age: 0,
        }
    }

    /// Three writes, the last through sidecar 1; the replica takes the key over at 30–40 ms
    /// and a read at 60 ms finds the second write's value.
    fn taken_over(samples: &[ReplicationSample]) -> Report {
        taken_over_since(samples, None)
    }

    /// [`taken_over`], the tables naming the category `Sync` for writes sent after
    /// `sync_since` ms.
    fn taken_over_since(samples: &[ReplicationSample], sync_since: Option<u64>) -> Report {
        let mut h = KeyHistory {
            writes: vec![set("v0", 0, 0), set("v1", 10, 0), set("v2", 20, 1)],
            reads: vec![read("v1", 60)],
        };
        let window = Window {
            start: 30 * MS,
            stands: 40 * MS,
            end: 50 * MS,
            sync_since: sync_since.map(|ms| ms * MS),
        };
        let (reverts, _) = AtRisk::reported(samples).reverts(&h.writes, &window);
        for r in reverts {
            stand(&mut h.writes, window.stands, r);
        }
        let tol = Tolerance { late: 0, early: 0 };
        history::check_key("order:k", &h, tol)
    }

    #[test]
    fn an_async_replica_may_miss_a_write_whose_failure_its_sidecar_reported() {
        let reported = [
            sample(0, 5, 0),
            sample(1, 15, 0),
            sample(1, 25, 1),
            sample(0, 90, 0),
        ];
        let r = taken_over(&reported);
        assert!(r.clean(), "{r}: {:?}", r.examples);
        assert_eq!(r.failover_drops, 1, "{r}");
        // Sent once the tables named the category `Sync` (a handover, a swap of roles under
        // way): acknowledged `Sync`, so the replica must have it, failure reported or not.
        let r = taken_over_since(&reported, Some(15));
        assert_eq!(r.lost_writes, 1, "{r}");
        // Sent before: at risk as before.
        let r = taken_over_since(&reported, Some(25));
        assert!(r.clean(), "{r}: {:?}", r.examples);
    }

    #[test]
    fn an_async_replica_may_miss_what_a_killed_sidecar_had_on_its_way() {
        let restarted = ReplicationSample {
            generation: 1,
            ..sample(1, 90, 0)
        };
        let reported = [
            sample(0, 5, 0),
            sample(1, 19, 0),
            restarted,
            sample(0, 90, 0),
        ];
        let r = taken_over(&reported);
        assert!(r.clean(), "{r}: {:?}", r.examples);
    }

    #[test]
    fn a_write_the_replica_ran_after_taking_over_does_not_hide_an_earlier_loss() {
        // v1's result was lost (sidecar 1 counted a failure); v3 began once the failover
        // table may have been out and ran on the replica, after a read that found v0.
        let mut h = KeyHistory {
            writes: vec![set("v0", 0, 0), set("v1", 20, 1), set("v3", 35, 0)],
            reads: vec![read("v0", 33)],
        };
        let window = Window {
            start: 30 * MS,
            stands: 40 * MS,
            end: 50 * MS,
            sync_since: None,
        };
        let reported = [
            sample(1, 15, 0),
            sample(1, 25, 1),
            sample(0, 5, 0),
            sample(0, 90, 0),
        ];
        let (reverts, risky) = AtRisk::reported(&reported).reverts(&h.writes, &window);
        assert_eq!(risky, 1);
        for r in reverts {
            stand(&mut h.writes, window.stands, r);
        }
        let r = history::check_key("order:k", &h, Tolerance { late: 0, early: 0 });
        assert!(r.clean(), "{r}: {:?}", r.examples);
    }

    #[test]
    fn an_async_replica_missing_a_write_nobody_reported_is_a_lost_write() {
        // No failure counted: the result was delivered, and the replica must have it.
        let quiet = [
            sample(0, 5, 0),
            sample(1, 15, 0),
            sample(1, 25, 0),
            sample(1, 90, 0),
        ];
        let r = taken_over(&quiet);
        assert_eq!(r.lost_writes, 1, "{r}");
        // A failure counted before the write was answered does not cover it.
        let earlier = [
            sample(1, 12, 0),
            sample(1, 14, 1),
            sample(1, 25, 1),
            sample(1, 90, 1),
        ];
        let r = taken_over(&earlier);
        assert_eq!(r.lost_writes, 1, "{r}");
        // Nor does a failure of another sidecar.
        let other = [
            sample(0, 15, 0),
            sample(0, 25, 1),
            sample(1, 5, 0),
            sample(1, 90, 0),
        ];
        let r = taken_over(&other);
        assert_eq!(r.lost_writes, 1, "{r}");
    }
}
