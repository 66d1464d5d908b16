//! Plans with a dead end: an instance a plan moves data from or to became unreachable. Only
//! the moves with a dead end are given up (`docs/protocol.md`, "Failover and failback"); the
//! moves between live instances go on with the next attempt.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::{debug, info, warn};

use crate::api::cache_policy::{CachePolicy, MoveStatus, RebalanceStatus, rebalance_phase};
use crate::api::conditions::Time;
use crate::api::redis_instance::{InstancePhase, RedisInstance};
use crate::operator::cache_policy::build::{InstanceView, served_ranges};
use crate::operator::cache_policy::{Error, PolicyContext, fences};
use crate::redis::protocol::names;
use crate::routing::keyspace::Resolver;
use crate::routing::slots::SlotRange;
use crate::routing::table::{Migration, RoutingTable};

use super::Driver;
/// The moves of an active plan whose source or target is unreachable, with the dead ends.
pub fn dead_ends(r: &RebalanceStatus, views: &[InstanceView]) -> Vec<String> {
    if !r.is_active() || r.phase == rebalance_phase::FINALIZING {
        return Vec::new();
    }
    let dead = |name: &str| {
        views
            .iter()
            .any(|v| v.name == name && v.phase == InstancePhase::Unreachable)
    };
    let mut out: Vec<String> = r
        .moves
        .iter()
        .flat_map(|m| [m.from.clone(), m.to.clone()])
        .filter(|n| dead(n))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The moves of `r` whose source and target are both alive (not in `dead`): they go on when
/// the plan is partly abandoned.
pub fn live_moves(r: &RebalanceStatus, dead: &[String]) -> Vec<MoveStatus> {
    r.moves
        .iter()
        .filter(|m| !dead.contains(&m.from) && !dead.contains(&m.to))
        .cloned()
        .collect()
}

/// Takes the moves of an active plan whose source or target became unreachable out of it
/// (`docs/protocol.md`, "Failover and failback"): a dead target's range goes back to its
/// source, a dead source's to its target (the routing build hands the migrating range off).
/// The source's importing marker stays until the table that gives the range back is
/// published ([`unmark_given_back`]): until then sidecars on the migrating table keep sending
/// the keys that moved to the dead target, where they fail, rather than reading them from the
/// source as absent. Moves between two live instances are never dropped
/// half-done: when some are left, the plan goes on with them in a new attempt; only a plan
/// whose every move has a dead end is marked Failed.
///
/// Before it changes anything it fences the running attempt off every live source and target:
/// with the next attempt's own mover token when the plan goes on (that attempt claims the same
/// token, so it is not fenced off; the operator's highest token would fence it too), with the
/// plan's highest token when it ends. It records the dead instances' fences at
/// `next_version` on every instance that answers, and deletes the running Job; the driver
/// starts the next attempt. Each source whose target died is to get back the keys the move
/// had in transit ([`GiveBack`], returned): right before the table that gives the range back
/// is written, not before — `table` is the published table (the one that runs the moves).
pub async fn abandon_dead_ends(
    ctx: &PolicyContext,
    policy: &CachePolicy,
    rb: Option<RebalanceStatus>,
    views: &[InstanceView],
    selected: &[Arc<RedisInstance>],
    table: Option<&RoutingTable>,
    next_version: u64,
) -> Result<(Option<RebalanceStatus>, Option<GiveBack>), Error> {
    let Some(mut r) = rb else {
        return Ok((None, None));
    };
    let dead = dead_ends(&r, views);
    if dead.is_empty() {
        return Ok((Some(r), None));
    }
    let shared = &ctx.shared;
    let namespace = policy.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", policy.name_any());
    let alive = |name: &str| {
        selected
            .iter()
            .find(|ri| ri.name_any() == name && !dead.iter().any(|d| d == name))
    };
    let live = live_moves(&r, &dead);
    let goes_on = !live.is_empty();
    let next_attempt = r.attempts.saturating_add(1).max(1);
    let mover = if goes_on {
        fences::attempt_mover(&key, r.plan_id, next_attempt)
    } else {
        fences::operator_mover(&key, r.plan_id)
    };
    // Fence the running attempt off every live end first: from here on it changes nothing.
    let mut fenced: Vec<&str> = Vec::new();
    for m in &r.moves {
        for end in [&m.from, &m.to] {
            if fenced.contains(&end.as_str()) {
                continue;
            }
            fenced.push(end);
            if let Some(ri) = alive(end)
                && let Err(e) = fences::claim(shared, &namespace, &mover, ri).await
            {
                warn!(instance = %end, error = %e, "could not fence the rebalance Jobs off an instance");
            }
        }
    }
    // The keys a move whose target died has in transit go back under their names on its
    // source right before the table that gives the range back is written, while its
    // importing marker is set: every sidecar that can send a command on those keys goes
    // through the guard, which refuses them while their tombstones exist. Once the table is
    // out, plain commands run on the source, and the marker goes. Not earlier: back on the
    // source, the keys take writes through its guard from sidecars that know the target
    // failed over, and a reconcile that stops before the table is written (a purge timing
    // out, the operator killed) leaves them there while the published table still runs the
    // move — should the source die next, its range goes to the target's older copies and its
    // writes are freed (chaos seed 3).
    let give_back = table.map(|table| GiveBack {
        namespace: namespace.clone(),
        key: key.clone(),
        plan: r.clone(),
        dead: dead.clone(),
        mover: mover.clone(),
        table: table.clone(),
    });
    let raise: Vec<(String, u64)> = dead.iter().map(|d| (d.clone(), next_version)).collect();
    fences::notify(shared, &namespace, &key, selected, &raise).await;
    if let Some(name) = r.job.clone() {
        let driver = Driver::new(shared, &ctx.jobs, policy, Some(&r));
        let _ = driver
            .jobs
            .delete(&name, &kube::api::DeleteParams::background())
            .await;
    }
    let driver = Driver::new(shared, &ctx.jobs, policy, Some(&r));
    if goes_on {
        let dropped = r.moves.len() - live.len();
        r.moves = live;
        r.attempts = next_attempt;
        r.job_missing_since = None;
        // No Job yet: `follow` creates it once the table is out (a Job it finds missing it
        // takes for a deleted one, whose pod may run on, and starts the attempt after it).
        r.job = None;
        r.message = Some(format!(
            "{} became unreachable: {dropped} moves with it resolved toward the instances that are alive (data only the unreachable instance held is unavailable until it returns, then dropped); the {} moves between live instances go on with attempt {next_attempt}",
            dead.join(", "),
            r.moves.len()
        ));
        driver
            .event(
                "RebalancePartlyAbandoned",
                true,
                r.message.clone().unwrap_or_default(),
            )
            .await;
        warn!(plan = r.plan_id, dead = ?dead, attempt = next_attempt, "rebalance partly abandoned; the moves between live instances go on");
        return Ok((Some(r), give_back));
    }
    r.phase = rebalance_phase::FAILED.to_owned();
    r.finished_at = Some(Time(Timestamp::now()));
    r.message = Some(format!(
        "abandoned: {} became unreachable; its ranges go to the instances that are alive (data only the unreachable instance held is unavailable until it returns, then dropped)",
        dead.join(", ")
    ));
    driver
        .event(
            "RebalanceAbandoned",
            true,
            r.message.clone().unwrap_or_default(),
        )
        .await;
    warn!(plan = r.plan_id, dead = ?dead, "rebalance abandoned");
    Ok((Some(r), give_back))
}

/// The keys in transit of the moves given up for their dead targets, to go back to their
/// sources right before the table that gives the ranges back is written ([`GiveBack::run`]).
pub struct GiveBack {
    namespace: String,
    key: String,
    /// The plan as it was, with the moves given up.
    plan: RebalanceStatus,
    dead: Vec<String>,
    mover: crate::redis::protocol::mover::Mover,
    /// The published table, which runs the moves.
    table: RoutingTable,
}

impl std::fmt::Debug for GiveBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GiveBack")
            .field("plan", &self.plan.plan_id)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl GiveBack {
    /// Gives the keys back ([`give_back_transit`]). An error fails the reconcile before it
    /// publishes; the next one gives the moves up again (this is idempotent).
    pub async fn run(
        &self,
        ctx: &PolicyContext,
        selected: &[Arc<RedisInstance>],
    ) -> Result<(), Error> {
        give_back_transit(
            ctx,
            &self.namespace,
            &self.key,
            &self.plan,
            &self.dead,
            selected,
            &self.mover,
            &self.table,
        )
        .await
    }
}

/// The migration of the move `m` of plan `plan`, as the tables carry it.
pub(super) fn migration_of(m: &MoveStatus, plan: i64) -> Migration {
    Migration {
        category: m.category.clone(),
        start: u16::try_from(m.start).unwrap_or_default(),
        end: u16::try_from(m.end).unwrap_or_default(),
        from: m.from.clone(),
        to: m.to.clone(),
        epoch: u64::try_from(plan).unwrap_or_default(),
        target_serves: m.target_serves,
    }
}

/// Gives the keys in transit of every move of `r` whose target is dead (and source alive) back
/// to its source ([`fences::give_back_transit`]), by `mover`, which also fences every earlier
/// attempt off the source in the same script. A move into a range its target served already
/// (from a draining instance) gets nothing back: its range fails over with the target.
#[allow(clippy::too_many_arguments)]
async fn give_back_transit(
    ctx: &PolicyContext,
    namespace: &str,
    key: &str,
    r: &RebalanceStatus,
    dead: &[String],
    selected: &[Arc<RedisInstance>],
    mover: &crate::redis::protocol::mover::Mover,
    table: &RoutingTable,
) -> Result<(), Error> {
    let mut by_source: Vec<(&str, Vec<fences::GivenBack>)> = Vec::new();
    let mut resolver = None;
    for m in r
        .moves
        .iter()
        .filter(|m| dead.contains(&m.to) && !dead.contains(&m.from))
    {
        let resolver = match &resolver {
            Some(r) => r,
            None => resolver.insert(Resolver::new(table.clone()).map_err(|e| Error::GiveBack {
                instance: m.from.clone(),
                message: e.to_string(),
            })?),
        };
        let Some(category) = resolver.category_id(&m.category) else {
            continue;
        };
        let migration = migration_of(m, r.plan_id);
        let given = fences::GivenBack {
            marker: names::importing(key, &migration),
            category,
            range: SlotRange::new(migration.start, migration.end),
        };
        match by_source.iter_mut().find(|(s, _)| *s == m.from) {
            Some((_, moves)) => moves.push(given),
            None => by_source.push((&m.from, vec![given])),
        }
    }
    let Some(resolver) = resolver else {
        return Ok(());
    };
    for (from, moves) in by_source {
        let Some(source) = selected.iter().find(|ri| ri.name_any() == from) else {
            continue;
        };
        let back =
            fences::give_back_transit(&ctx.shared, namespace, source, mover, &resolver, &moves)
                .await
                .map_err(|message| Error::GiveBack {
                    instance: from.to_owned(),
                    message,
                })?;
        if back > 0 {
            info!(
                instance = %from,
                keys = back,
                "gave the keys in transit back to the source of moves whose target died"
            );
        }
    }
    Ok(())
}

/// The migrations of the moves of the active plan `before` that `after` no longer runs (taken
/// out of it, or the plan ended): the moves given up in this reconcile, as the tables carried
/// them.
pub fn dropped_moves(
    before: Option<&RebalanceStatus>,
    after: Option<&RebalanceStatus>,
) -> Vec<Migration> {
    let Some(before) = before.filter(|b| b.is_active()) else {
        return Vec::new();
    };
    // A plan that ended (every move had a dead end) keeps its moves in its status.
    let kept = after.filter(|a| a.plan_id == before.plan_id && a.is_active());
    before
        .moves
        .iter()
        .filter(|m| kept.is_none_or(|a| !a.moves.contains(m)))
        .map(|m| migration_of(m, before.plan_id))
        .collect()
}

/// The migrations among `candidates` that `table` gives back to their source: not migrating,
/// the source serves the whole range and the target none of it (a move abandoned for its dead
/// target, or rolled back).
pub fn given_back<'a>(
    candidates: impl IntoIterator<Item = &'a Migration>,
    table: &RoutingTable,
) -> Vec<Migration> {
    let served = served_ranges(table);
    let covers = |instance: &str, category: &str, slot: u16| {
        served.get(instance).is_some_and(|ranges| {
            ranges.iter().any(|(c, r): &(String, SlotRange)| {
                c == category && r.start <= slot && slot <= r.end
            })
        })
    };
    let mut out: Vec<Migration> = Vec::new();
    for m in candidates {
        if !table.migrating.iter().any(|t| t.same_move(m))
            && !out.iter().any(|o| o.same_move(m))
            && (m.start..=m.end).all(|s| covers(&m.from, &m.category, s))
            && !(m.start..=m.end).any(|s| covers(&m.to, &m.category, s))
        {
            out.push(m.clone());
        }
    }
    out
}

/// Removes the importing markers of the moves among `candidates` that the published `table`
/// gives back to their source, now that no table routes their ranges to the target any more
/// (`docs/protocol.md`, "Failover and failback"). Not before: while the migrating table is the
/// newest, sidecars on it send the keys that moved to the target through the source's guard,
/// and an unmarked source would answer for them from itself — as absent. The candidates are
/// the migrations of the table this one replaced (when it was published in this reconcile)
/// and the moves given up in this reconcile (an operator that restarted between publishing
/// and unmarking gives them up again, its status not written yet). A marker that cannot be
/// removed now stays: it is only garbage (sidecars on the migrating table get errors for the
/// keys the source does not hold until they load a newer table).
pub async fn unmark_given_back(
    ctx: &PolicyContext,
    policy: &CachePolicy,
    selected: &[Arc<RedisInstance>],
    candidates: &[Migration],
    table: &RoutingTable,
) {
    let namespace = policy.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", policy.name_any());
    for m in given_back(candidates, table) {
        let Some(source) = selected.iter().find(|ri| ri.name_any() == m.from) else {
            continue;
        };
        let marker = names::importing(&key, &m);
        match fences::unmark(&ctx.shared, &namespace, source, &marker).await {
            Ok(true) => info!(
                instance = %m.from,
                marker = %marker,
                version = table.version,
                "removed the importing marker of a move given back to its source"
            ),
            Ok(false) => debug!(
                instance = %m.from,
                marker = %marker,
                "no importing marker to remove, or one of a move into a range its dead target served (the draining source never answers for it)"
            ),
            Err(e) => {
                warn!(instance = %m.from, error = %e, "could not remove an importing marker")
            }
        }
    }
}
