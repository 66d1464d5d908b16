//! `redis-fleet rebalance`: the Job that moves the data of one plan, online, losing nothing.
//! `docs/protocol.md` is the protocol; this is its Job side.
//!
//! The operator owns the routing table; the Job owns the data movement. They meet in the
//! CachePolicy's `status.rebalance`: the operator writes the plan and its phase, the Job its
//! `step` and counters (only while the plan and attempt are still its own).
//!
//! 0. **Claim**: raise the mover token of this attempt on every source and target, so an
//!    older attempt whose process lives on can no longer change anything.
//! 1. **Prepare**: delete whatever the targets hold in the moving ranges (leftovers of an
//!    older ownership), then report `Prepared`.
//! 2. **Flip** (operator): publish the ranges as `migrating`; sidecars run every command on
//!    those keys through the guard on the source.
//! 3. **Converge**: wait (up to `--converge-timeout`) until every live sidecar's heartbeat shows
//!    the flip version.
//! 4. **Fence**: raise the fences of the sources and targets to the flip version and close the
//!    connections of older tables there — sidecars that did not converge are fenced off.
//! 5. **Import**: set the importing markers: from now on, absent keys live on the target.
//! 6. **Copy**: tombstones of earlier attempts first, then keys the sidecars asked for, then a
//!    SCAN of each source per target, for all the ranges moving between the two (checkpointed,
//!    paced by `keysPerSecond`, batches in flight — see `migrate/batch.rs`; big or non-portable
//!    values piece by piece, `migrate/piecewise.rs`), then sweeps (one walk of each source,
//!    or one per prefix when its moves are ranges of one category) until nothing of the ranges
//!    is left on the sources.
//! 7. **Finalize** (operator): publish the targets as owners.
//! 8. **Cleanup**: once every live sidecar routes by the final table, fence the sources to it
//!    and remove the markers; remove the checkpoints.

mod api_calls;
mod batch;
mod control;
mod copy;
mod garbage;
mod groups;
mod pacing;
mod piecewise;
mod roster;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use bytes::Bytes;
use kube::api::Api;
use kube::{Client, ResourceExt};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tracing::{info, warn};

use crate::api::CachePolicy;
use crate::api::cache_policy::{
    MoveStatus, Pacing, RebalanceStatus, config_map_name, rebalance_phase, rebalance_step,
};
use crate::redis::connect::{Credentials, redact};
use crate::redis::endpoint::{self, Available, SecretSource, read_secrets, referenced_secrets};
use crate::redis::keys::RangeScan;
use crate::redis::protocol::mover::{self, MoveError};
use crate::redis::protocol::{fence, heartbeat, names};
use crate::routing::config_map::table_of;
use crate::routing::keyspace::{CategoryId, Resolver};
use crate::routing::slots::SlotRange;
use crate::routing::table::Migration;

use batch::move_error;

/// Values larger than this (MEMORY USAGE) are copied piece by piece, not with one DUMP.
pub const BIG_VALUE_BYTES: u64 = 8 << 20;

/// Field manager of the Job's status writes.
pub const FIELD_MANAGER: &str = "redis-fleet-rebalance";

/// How the Job runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of the CachePolicy.
    pub namespace: String,
    /// Name of the CachePolicy.
    pub policy: String,
    /// The plan to carry out (`status.rebalance.planId`).
    pub plan_id: i64,
    /// This attempt of the plan (`status.rebalance.attempts` when it started); `None`: the
    /// attempt in status now.
    pub attempt: Option<i32>,
    /// The pod name, for logs.
    pub owner: String,
    /// Longest wait for the operator to publish a table (flip, finalize).
    pub publish_timeout: Duration,
    /// Longest wait for the sidecars to converge on the flip version; then sidecars still
    /// behind are fenced off the sources and targets.
    pub converge_timeout: Duration,
}

/// Why the Job failed; Kubernetes retries it, and it resumes from its checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the API failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// Talking to an instance failed.
    #[error("instance {instance}: {message}")]
    Redis {
        /// Instance.
        instance: String,
        /// Error text (credentials redacted).
        message: String,
    },
    /// The routing table or a Secret could not be read.
    #[error("{0}")]
    Setup(String),
    /// A wait ran out.
    #[error("{0}")]
    Timeout(String),
    /// A bug: a task of the Job panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
    /// A key could not be moved.
    #[error("moving {key:?}: {source}")]
    Move {
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: MoveError,
    },
    /// A newer plan or attempt took over: this Job stops without changing anything more.
    #[error("a newer rebalance plan or attempt took over")]
    Superseded,
}

/// A connection to one instance of the table, and how to report its errors (credentials
/// redacted). Cheap to clone: the connection is multiplexed.
#[derive(Clone)]
struct Instance {
    name: String,
    credentials: Credentials,
    /// The Job's own commands: scans, checkpoints, markers, the urgent list.
    conn: MultiplexedConnection,
    /// The copy's move scripts (the connection of `conn` for an instance no move uses): on a
    /// connection of their own, so that a scan or a checkpoint does not wait in line behind
    /// every script in flight.
    data: MultiplexedConnection,
    /// Move scripts under way on `data` (see [`batch::SCRIPTS_AT_ONCE`]).
    scripts: Arc<Semaphore>,
    /// The slot group states this attempt's takes marked moving here.
    marked: batch::MarkedGroups,
}

impl Instance {
    fn err(&self, e: &redis::RedisError) -> Error {
        Error::Redis {
            instance: self.name.clone(),
            message: redact(&e.to_string(), &self.credentials),
        }
    }
}

/// One move, resolved.
struct Step {
    category: CategoryId,
    range: SlotRange,
    from: String,
    to: String,
    /// The target served the range already when the plan was made (a draining instance
    /// emptied into its owner): its copies are live, not stale.
    target_serves: bool,
    /// The plan recorded `target_serves` (plans of older operators, or a CRD not yet upgraded,
    /// do not).
    recorded: bool,
}

struct Job {
    config: Config,
    attempt: i32,
    policies: Api<CachePolicy>,
    /// The policy's routing ConfigMap.
    routing: Routing,
    resolver: Resolver,
    instances: HashMap<String, Instance>,
    steps: Vec<Step>,
    keys_per_second: u64,
    batch_size: usize,
    moved: u64,
    /// Keys the copy has sent on their way (paced by `clock`).
    launched: u64,
    /// When the copy may send its next keys: at `keys_per_second`, or the rate `pacing` says.
    clock: pacing::RateClock,
    /// The sidecars' latency reports as the copy's guide (`None`: `pacing: Fixed`).
    pacing: Option<pacing::Pacing>,
    /// When the copy last read the sidecars' latency reports.
    latency_read: Instant,
    /// Why the copy runs below `keys_per_second`, for `status.rebalance.pacing`.
    pacing_note: Option<String>,
    total: u64,
    started: Instant,
    last_report: Instant,
    /// The copy's next report of its count is its first since it started or resumed
    /// ([`control::count_every`]).
    first_count: bool,
    /// Whether [`Job::pacing_note`] says the copy slowed for the sidecars' latency (or for
    /// their silence), rather than that it grows toward `keys_per_second`.
    slowed: bool,
    /// Whether a report has said the copy slowed since it started or resumed, or since a
    /// sidecar other than [`Job::slowed_by`] slowed it: such a note goes at once, later ones
    /// (as the pacing goes up and down for the same sidecar) with the count.
    slowed_sent: bool,
    /// The sidecar and instance whose latency last cut the copy's rate.
    slowed_by: Option<(String, String)>,
    /// When the copy last read the policy's `redisfleet.io/rebalance` annotation.
    control_read: Instant,
    /// The annotation asked for a pause: the copy holds once its batches in flight landed.
    pausing: bool,
    /// The copy's read of the policy (its annotation) under way: the copy does not wait on it.
    control: api_calls::Beside<CachePolicy>,
    /// The copy's progress report under way (`Job::report_beside`).
    reporting: api_calls::Beside<bool>,
    /// What the report under way says once only (`control::Once`): said again when it does
    /// not land.
    reporting_once: control::Once,
    /// The copy resumed while the hold's last report was under way: `Copying` is reported
    /// once that one is done.
    copying_owed: bool,
    /// The sources' `maxmemory-policy`: while one may evict keys without a TTL, the copy
    /// holds as paused (`control.rs`).
    eviction: control::EvictionWatch,
    /// When the copy last emptied the urgent list.
    urgent_read: Instant,
    /// Whether this attempt's reports carry its key counts: not when it only cleans up, whose
    /// plan's counts are an earlier attempt's (which copied the keys).
    counts: bool,
    mover: mover::Mover,
    /// Keys the copy's batches have under way.
    in_transit: batch::InTransit,
    /// Slot groups sidecars asked for while the copy had batches in flight, per source: they
    /// move once those have landed (`groups.rs`).
    groups_asked: BTreeMap<String, std::collections::BTreeSet<u16>>,
}

/// The Job's fields of `status.rebalance` (exactly
/// [`JOB_OWNED_REBALANCE_FIELDS`](crate::api::cache_policy::JOB_OWNED_REBALANCE_FIELDS): the
/// operator's own status writes leave these out).
/// `counts` (keys moved, keys in all, keys per second) are left out when `None`.
fn progress(
    step: &str,
    counts: Option<(u64, u64, i64)>,
    stragglers: &[String],
    pacing: Option<&str>,
) -> serde_json::Value {
    let mut fields = json!({
        "step": step,
        "stragglers": stragglers,
        "pacing": pacing,
    });
    if let Some((moved, total, keys_per_second)) = counts {
        fields["keysMoved"] = moved.into();
        fields["keysTotal"] = total.into();
        fields["keysPerSecond"] = keys_per_second.into();
    }
    fields
}

/// Runs the Job to completion. A Job that finds a newer plan or attempt in charge stops
/// quietly (`Ok`).
pub async fn run(config: Config) -> Result<(), Error> {
    let (namespace, policy, plan_id) = (
        config.namespace.clone(),
        config.policy.clone(),
        config.plan_id,
    );
    let client = api_calls::client().await?;
    let mut attempt = None;
    match run_steps(client.clone(), config, &mut attempt).await {
        Err(Error::Superseded) => {
            info!("a newer plan or attempt is in charge; stopping");
            Ok(())
        }
        // A pod stopped for long (`kubectl delete job` while its node was away, a frozen VM)
        // resumes with its calls timed out before it reads a reply: the fence that a newer
        // attempt raised is what holds, and that is why it stops.
        Err(e) if superseded(client, &namespace, &policy, plan_id, attempt).await => {
            warn!(error = %e, "failed after a newer plan or attempt took over; stopping");
            Ok(())
        }
        other => other,
    }
}

/// Whether the policy's status records a newer plan than `plan_id`, or a newer attempt of it
/// than `attempt` (`None`: this Job never learnt its attempt; then no). An API error: no.
async fn superseded(
    client: kube::Client,
    namespace: &str,
    policy: &str,
    plan_id: i64,
    attempt: Option<i32>,
) -> bool {
    let Some(attempt) = attempt else {
        return false;
    };
    let policies: Api<CachePolicy> = Api::namespaced(client, namespace);
    policies.get(policy).await.ok().is_some_and(|p| {
        p.status
            .and_then(|s| s.rebalance)
            .is_some_and(|r| r.plan_id > plan_id || (r.plan_id == plan_id && r.attempts > attempt))
    })
}

/// How long a Job waits for the policy's status to record its attempt.
const ATTEMPT_RECORD_WAIT: Duration = Duration::from_secs(30);

/// How often a Job waiting for the operator reports its step again when the status lost it
/// ([`Job::wait_for`]).
const REASSERT_EVERY: Duration = Duration::from_secs(1);

/// The Job's steps; `in_charge` learns the attempt this Job runs as soon as it is known.
async fn run_steps(
    client: kube::Client,
    config: Config,
    in_charge: &mut Option<i32>,
) -> Result<(), Error> {
    let policies: Api<CachePolicy> = Api::namespaced(client.clone(), &config.namespace);
    let mut policy = policies.get(&config.policy).await?;
    let deadline = Instant::now() + ATTEMPT_RECORD_WAIT;
    let (plan, attempt) = loop {
        let Some(plan) = current_plan(&policy, config.plan_id) else {
            info!(
                plan = config.plan_id,
                "the plan is finished or superseded; nothing to do"
            );
            return Ok(());
        };
        let attempt = config.attempt.unwrap_or(plan.attempts);
        // The operator creates an attempt's Job before it writes the status that records the
        // attempt: a pod that starts in between waits for that status (an older attempt in
        // status is not a newer one in charge).
        if attempt <= plan.attempts || Instant::now() >= deadline {
            break (plan, attempt);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        policy = policies.get(&config.policy).await?;
    };
    if attempt != plan.attempts {
        return Err(Error::Superseded);
    }
    *in_charge = Some(attempt);
    let mut job = Job::connect(client, policies.clone(), &policy, &plan, config, attempt).await?;
    job.claim().await?;
    // The plan again, read after the claim: an earlier attempt still running (its Job deleted
    // while its pod ran on) is fenced off from the claim on, so whatever it did before — a
    // cleanup once the new owners were out, which only starts after the operator recorded
    // them — shows in this read. Read before the claim, the new owners' recording could be
    // missed while the cleanup that follows it was not, and steps 5-7 below would purge them.
    let Some(plan) = current_plan(&policies.get(&job.config.policy).await?, job.config.plan_id)
    else {
        info!(
            plan = job.config.plan_id,
            "the plan finished meanwhile; nothing to do"
        );
        return Ok(());
    };
    if plan.attempts != attempt {
        return Err(Error::Superseded);
    }
    if plan.flip_version.is_some() {
        job.serves_by_markers().await?;
    }
    if let Some(last) = plan.final_version {
        // The new owners are out: an earlier attempt copied everything, and may have cleaned
        // up (its markers gone). Steps 5-7 again would take the targets' keys, the owners'
        // data now, for stale copies and delete them. Only the cleanup is left.
        info!(
            version = last,
            "the new owners are published already: cleaning up only"
        );
        job.counts = false;
        return job.finish(u64::try_from(last).unwrap_or_default()).await;
    }
    if plan.flip_version.is_none() {
        job.report(rebalance_step::PREPARING, &[]).await?;
        job.prepare().await?;
        job.report(rebalance_step::PREPARED, &[]).await?;
    }
    let Some(flip) = job
        .wait_for(|r| r.flip_version, rebalance_step::PREPARED)
        .await?
    else {
        return Ok(());
    };
    let flip = u64::try_from(flip).unwrap_or_default();
    if !job.converge(flip).await? {
        warn!(
            version = flip,
            "sidecars still behind after the converge timeout are fenced off the moving instances"
        );
    }
    job.report(rebalance_step::FENCING, &[]).await?;
    job.fence(flip, true).await?;
    job.empty_targets(true).await?;
    job.report(rebalance_step::IMPORTING, &[]).await?;
    job.open_groups().await?;
    job.import(true, false).await?;
    // What the sidecars see before the copy's load: the lowest latencies to compare with
    // (and whether they sent traffic, which the count's scan then yields to).
    job.pace_by_latency(false).await?;
    job.total = job.count().await?;
    // The sources import already: sidecars may wait on keys the Job moves for them, so from
    // here on no report holds the Job up.
    job.report_beside(rebalance_step::COPYING)?;
    job.count_afresh();
    // `keysPerSecond` counts from here: the time before (a paused flip, converging, counting)
    // gives the copy no allowance to burst with.
    job.started = Instant::now();
    job.clock = pacing::RateClock::new(job.keys_per_second as f64, job.started);
    // The copy's starting rate (gentle beside traffic), on the clock just set.
    job.pace_by_latency(false).await?;
    job.copy().await?;
    // The sweeps move what is left at once (what sidecars kept writing); their range scans
    // yield to traffic as the count's do.
    job.pacing_note = None;
    job.slowed = false;
    job.sweep().await?;
    job.report(rebalance_step::COPIED, &[]).await?;
    let Some(last) = job
        .wait_for(|r| r.final_version, rebalance_step::COPIED)
        .await?
    else {
        return Ok(());
    };
    job.finish(u64::try_from(last).unwrap_or_default()).await
}

/// The rebalance status if it is still plan `plan_id` and still running.
fn current_plan(policy: &CachePolicy, plan_id: i64) -> Option<RebalanceStatus> {
    policy
        .status
        .as_ref()?
        .rebalance
        .clone()
        .filter(|r| r.plan_id == plan_id)
        .filter(|r| r.phase != rebalance_phase::SUCCEEDED && r.phase != rebalance_phase::FAILED)
}

/// Where the policy's routing table is published.
struct Routing {
    config_maps: Api<k8s_openapi::api::core::v1::ConfigMap>,
    name: String,
}

impl Routing {
    /// The table the routing ConfigMap holds now.
    async fn published(&self) -> Result<crate::routing::table::RoutingTable, Error> {
        let cm = self.config_maps.get(&self.name).await?;
        table_of(&cm)
            .ok_or_else(|| Error::Setup("the routing ConfigMap has no table".to_owned()))?
            .map_err(|e| Error::Setup(e.to_string()))
    }
}

impl Job {
    async fn connect(
        client: Client,
        policies: Api<CachePolicy>,
        policy: &CachePolicy,
        plan: &RebalanceStatus,
        config: Config,
        attempt: i32,
    ) -> Result<Self, Error> {
        let namespace = policy.namespace().unwrap_or_default();
        let routing = Routing {
            config_maps: Api::namespaced(client.clone(), &namespace),
            name: config_map_name(policy),
        };
        let table = routing.published().await?;
        let secrets = read_secrets(
            &SecretSource::Api(namespace.clone()),
            Some(&client),
            &referenced_secrets(&table),
        )
        .await
        .map_err(Error::Setup)?;
        let resolver = Resolver::new(table).map_err(|e| Error::Setup(e.to_string()))?;
        // The sources and targets must answer; the other instances only hear about fences
        // (best effort): one that is down (failed over) must not stop the moves.
        let moving: Vec<&str> = plan
            .moves
            .iter()
            .flat_map(|m| [m.from.as_str(), m.to.as_str()])
            .collect();
        let mut instances = HashMap::new();
        for name in resolver.instances() {
            let endpoint = &resolver.table().instances[name];
            let must = moving.contains(&name.as_str());
            let available = Available {
                instance: name,
                values: &secrets,
            };
            let target = match endpoint::target(endpoint, &available).await {
                Ok(t) => t,
                Err(e) if !must => {
                    warn!(instance = %name, error = %e, "skipping an instance no move uses");
                    continue;
                }
                Err(e) => return Err(Error::Setup(e)),
            };
            let timeout = Duration::from_secs(if must { 10 } else { 3 });
            let conn = match target.connect(timeout).await {
                Ok(c) => c,
                Err(e) if !must => {
                    warn!(instance = %name, error = %redact(&e.to_string(), &target.credentials), "skipping an instance no move uses");
                    continue;
                }
                Err(e) => {
                    return Err(Error::Redis {
                        instance: name.clone(),
                        message: redact(&e.to_string(), &target.credentials),
                    });
                }
            };
            let data = if must {
                target.connect(timeout).await.map_err(|e| Error::Redis {
                    instance: name.clone(),
                    message: redact(&e.to_string(), &target.credentials),
                })?
            } else {
                conn.clone()
            };
            let instance = Instance {
                name: name.clone(),
                credentials: target.credentials,
                conn,
                data,
                scripts: Arc::new(Semaphore::new(batch::SCRIPTS_AT_ONCE)),
                marked: batch::MarkedGroups::default(),
            };
            instances.insert(name.clone(), instance);
        }
        let mut steps = Vec::new();
        for m in &plan.moves {
            steps.push(resolve_step(&resolver, m)?);
        }
        let spec = &policy.spec.balancing.rebalance;
        let keys_per_second = u64::try_from(spec.keys_per_second).unwrap_or(50_000).max(1);
        let mover = mover::Mover {
            policy: format!("{}/{}", config.namespace, config.policy),
            token: names::mover_token(
                u64::try_from(config.plan_id).unwrap_or_default(),
                u32::try_from(attempt).unwrap_or_default(),
            ),
        };
        Ok(Self {
            config,
            attempt,
            policies,
            routing,
            resolver,
            instances,
            steps,
            keys_per_second,
            batch_size: usize::try_from(spec.batch_size).unwrap_or(256).max(1),
            moved: 0,
            launched: 0,
            clock: pacing::RateClock::new(keys_per_second as f64, Instant::now()),
            pacing: (spec.pacing == Pacing::Adaptive).then(|| {
                let headroom = u64::try_from(spec.latency_headroom_microseconds)
                    .unwrap_or(pacing::DEFAULT_HEADROOM_MICROS);
                pacing::Pacing::new(keys_per_second, headroom)
            }),
            latency_read: Instant::now(),
            pacing_note: None,
            total: 0,
            started: Instant::now(),
            last_report: Instant::now(),
            first_count: false,
            slowed: false,
            slowed_sent: false,
            slowed_by: None,
            urgent_read: Instant::now(),
            control_read: Instant::now(),
            pausing: false,
            control: api_calls::Beside::default(),
            reporting: api_calls::Beside::default(),
            reporting_once: control::Once::default(),
            copying_owed: false,
            eviction: control::EvictionWatch::default(),
            counts: true,
            mover,
            in_transit: batch::InTransit::default(),
            groups_asked: BTreeMap::new(),
        })
    }

    /// For the moves whose plan does not record whether their target served the range already,
    /// once the plan flipped (the flip table no longer tells a failback from such a move):
    /// what the source's importing marker says. A move into a served range gets its marker,
    /// marked so (`…:target-serves`), before the flip; a failback never does.
    async fn serves_by_markers(&mut self) -> Result<(), Error> {
        let policy = self.mover.policy.clone();
        let unrecorded: Vec<(usize, String, Migration)> = self
            .migrations()
            .into_iter()
            .zip(&self.steps)
            .enumerate()
            .filter(|(_, (_, s))| !s.recorded)
            .map(|(i, ((from, m, _), _))| (i, from, m))
            .collect();
        for (i, from, m) in unrecorded {
            let source = self.instance(&from)?;
            let value: Option<String> = redis::cmd("GET")
                .arg(names::importing(&policy, &m))
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?;
            // No marker (not imported yet, or lost with a restarted source): the table's
            // answer stands, as before plans recorded it (a purge of a live owner is the
            // harm to avoid).
            let Some(value) = value else { continue };
            let serves = value.ends_with(mover::TARGET_SERVES);
            warn!(category = %m.category, from = %m.from, to = %m.to, serves, "the plan does not record whether the target serves the range (an older operator, or an older CRD); read from the source's marker");
            self.steps[i].target_serves = serves;
        }
        Ok(())
    }

    /// Step 9, once the new owners are published at version `last`: the cleanup, then done.
    async fn finish(&mut self, last: u64) -> Result<(), Error> {
        self.cleanup(last).await?;
        self.report(rebalance_step::DONE, &[]).await?;
        info!(
            keys = self.moved,
            seconds = self.started.elapsed().as_secs_f64(),
            "rebalance done"
        );
        Ok(())
    }

    fn instance(&mut self, name: &str) -> Result<&mut Instance, Error> {
        self.instances
            .get_mut(name)
            .ok_or_else(|| Error::Setup(format!("instance {name} is not in the routing table")))
    }

    /// Reports `step` ([`api_calls::write_progress`]), after the report beside the copy under
    /// way, if any, so that no older step lands over this one. `Ok(false)`: the status kept
    /// changing under it, nothing was written this time.
    async fn report(&mut self, step: &'static str, stragglers: &[String]) -> Result<bool, Error> {
        if let Some(earlier) = self.reporting.wait().await {
            let landed = api_calls::outcome("a progress report", earlier)?.unwrap_or(false);
            self.settle_once(landed);
        }
        let progress = self.progress(step, stragglers);
        self.reporting_once = self.once_said();
        self.slowed_sent |= self.slowed;
        let written = api_calls::write_progress(self.policies.clone(), progress).await?;
        self.settle_once(written);
        if written {
            self.last_report = Instant::now();
        }
        Ok(written)
    }

    /// What the last report beside the copy returned, once it has finished: `Some(true)` it
    /// was written, `Some(false)` it was not (the status kept changing, or the call failed,
    /// logged; what it said once only is then said again). A newer plan or attempt in charge
    /// stops the Job.
    fn report_landed(&mut self) -> Result<Option<bool>, Error> {
        match self.reporting.finished() {
            None => Ok(None),
            Some(done) => {
                let landed = api_calls::outcome("a progress report", done)?.unwrap_or(false);
                self.settle_once(landed);
                Ok(Some(landed))
            }
        }
    }

    /// What a report about to go says once only: the copy's first count since it started or
    /// resumed, the first note that it slowed.
    fn once_said(&self) -> control::Once {
        control::Once {
            first_count: self.first_count,
            slowed: self.slowed && !self.slowed_sent,
        }
    }

    /// The report that said [`Job::reporting_once`] has finished: when it did not land, its
    /// first count and its note that the copy slowed are due again ([`Job::count_due`]).
    fn settle_once(&mut self, landed: bool) {
        std::mem::take(&mut self.reporting_once).settle(
            landed,
            &mut self.first_count,
            &mut self.slowed_sent,
        );
    }

    /// Reports `step` on a task of its own, unless the last such report is still under way
    /// (then `Ok(false)`): the copy goes on meanwhile, and an API server that takes its time
    /// delays the status, not the keys sidecars wait for.
    fn report_beside(&mut self, step: &'static str) -> Result<bool, Error> {
        self.report_landed()?;
        if !self.reporting.idle() {
            return Ok(false);
        }
        self.last_report = Instant::now();
        let progress = self.progress(step, &[]);
        self.reporting_once = self.once_said();
        self.slowed_sent |= self.slowed;
        self.reporting
            .start(api_calls::write_progress(self.policies.clone(), progress));
        Ok(true)
    }

    /// This Job's fields of `status.rebalance` at `step`, now.
    fn progress(&self, step: &'static str, stragglers: &[String]) -> api_calls::Progress {
        let rate = self.moved as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let counts = self
            .counts
            .then(|| (self.moved, self.total.max(self.moved), rate.round() as i64));
        api_calls::Progress {
            policy: self.config.policy.clone(),
            plan_id: self.config.plan_id,
            attempt: self.attempt,
            step,
            fields: progress(step, counts, stragglers, self.pacing_note.as_deref()),
            moved: self.moved,
            total: self.total,
        }
    }

    /// The instances a move reads from or writes to.
    fn moving_instances(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .steps
            .iter()
            .flat_map(|s| [s.from.clone(), s.to.clone()])
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Raises this attempt's mover token on every source and target.
    async fn claim(&mut self) -> Result<(), Error> {
        let mover = self.mover.clone();
        for name in self.moving_instances() {
            let instance = self.instance(&name)?;
            mover
                .claim(&mut instance.conn)
                .await
                .map_err(|e| move_error(name.as_bytes(), e))?;
        }
        Ok(())
    }

    /// Waits until the operator publishes what `field` reads (flip or final version), which
    /// it does once it reads `step` (`Prepared`, `Copied`) in the status. `None` when the plan
    /// was superseded meanwhile.
    ///
    /// The step is reported once, and a status write can lose it: a report that gave up on a
    /// status that kept changing, or another writer putting an older step back (a plan start
    /// from a stale read did, before it carried a precondition; a tool or a hand edit can).
    /// The operator would then never publish, and the Job wait out its `--publish-timeout`
    /// (10 minutes) before the plan is tried again. So while it waits, a step the status no
    /// longer shows is reported again (at most once per [`REASSERT_EVERY`]).
    async fn wait_for(
        &mut self,
        field: impl Fn(&RebalanceStatus) -> Option<i64>,
        step: &'static str,
    ) -> Result<Option<i64>, Error> {
        let mut deadline = Instant::now() + self.config.publish_timeout;
        let mut reasserted: Option<Instant> = None;
        loop {
            let policy = self.policies.get(&self.config.policy).await?;
            let Some(plan) = current_plan(&policy, self.config.plan_id) else {
                info!("the plan was superseded");
                return Ok(None);
            };
            // A newer attempt is in charge (its token fenced this one off the instances).
            if plan.attempts > self.attempt {
                return Err(Error::Superseded);
            }
            if let Some(v) = field(&plan) {
                return Ok(Some(v));
            }
            // An older attempt in the status can only be a stale write, which the next one
            // may undo: this Job waits, and cannot report into it meanwhile.
            if plan.attempts == self.attempt
                && plan.step.as_deref() != Some(step)
                && reasserted.is_none_or(|at| at.elapsed() >= REASSERT_EVERY)
            {
                warn!(
                    step,
                    found = plan.step.as_deref().unwrap_or("none"),
                    "the status lost this Job's step while it waits for the operator; reporting it again"
                );
                reasserted = Some(Instant::now());
                self.report(step, &[]).await?;
                continue;
            }
            if control::paused(&policy) {
                // A paused plan is not flipped: the wait starts again once it resumes.
                deadline = Instant::now() + self.config.publish_timeout;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(
                    "the operator did not publish the next routing table in time".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn prepare(&mut self) -> Result<(), Error> {
        self.empty_targets(false).await?;
        // Moves from a legacy instance into ranges their target serves already: the target
        // holds live data, so absent keys live there from the first guarded command on.
        self.import(true, true).await?;
        Ok(())
    }

    /// Deletes the targets' keys of the moved ranges: stale copies, which the guard and the
    /// restores would take for moved data. With `after_fence`, again, for the ranges whose
    /// source does not import yet (no key moved): the target may have been the range's replica
    /// (`docs/replication.md`), taking results from sidecars on tables before the flip until
    /// the fence closed their connections — also where replication was turned off since.
    async fn empty_targets(&mut self, after_fence: bool) -> Result<(), Error> {
        let work: Vec<(String, String, CategoryId, SlotRange)> = self
            .steps
            .iter()
            .filter(|s| !s.target_serves)
            .map(|s| (s.from.clone(), s.to.clone(), s.category, s.range))
            .collect();
        let mover = self.mover.clone();
        let migrations = self.migrations();
        // Emptying a legacy instance into the range's live owner: nothing there is stale.
        for (from, to, category, range) in work {
            let resolver = self.resolver.clone();
            let cat = &resolver.categories()[usize::from(category)];
            let name = &cat.name;
            if after_fence {
                let Some((_, m, _)) = migrations.iter().find(|(f, m, _)| {
                    *f == from
                        && m.category == *name
                        && m.start == range.start
                        && m.end == range.end
                }) else {
                    continue;
                };
                let marker = names::importing(&mover.policy, m);
                let source = self.instance(&from)?;
                let importing: bool = redis::cmd("EXISTS")
                    .arg(&marker)
                    .query_async(&mut source.conn)
                    .await
                    .map_err(|e| source.err(&e))?;
                if importing {
                    // An earlier attempt began moving keys: the target holds moved data.
                    continue;
                }
            }
            // Before the flip, a replicated range's target may be its replica: its copies are
            // the range's data, not stale (a failover to it before the flip must find them);
            // they are deleted after the fence instead, when the flip table names no replica.
            let ranges = if after_fence {
                vec![range]
            } else {
                not_replicated_on(resolver.table(), name, range, &to)
            };
            if ranges.is_empty() {
                continue;
            }
            let target = self.instance(&to)?;
            let mut scan = RangeScan::new(&resolver, category, &ranges);
            let mut deleted = 0;
            while let Some(batch) = scan
                .next_batch(&mut target.conn)
                .await
                .map_err(|e| target.err(&e))?
            {
                let keys: Vec<Bytes> = batch.into_iter().map(Bytes::from).collect();
                deleted += mover
                    .delete(&mut target.conn, &keys)
                    .await
                    .map_err(|e| move_error(to.as_bytes(), e))?;
            }
            if deleted > 0 {
                info!(instance = %to, deleted, "removed stale keys from the target");
            }
        }
        Ok(())
    }

    /// Waits until every live sidecar on the sources and targets routes by `version` or
    /// later; `false` when the converge timeout ran out first.
    async fn converge(&mut self, version: u64) -> Result<bool, Error> {
        let deadline = Instant::now() + self.config.converge_timeout;
        let policy = self.mover.policy.clone();
        loop {
            let mut behind = BTreeMap::new();
            for name in self.moving_instances() {
                let instance = self.instance(&name)?;
                let beats = heartbeat::read(&mut instance.conn, &policy)
                    .await
                    .map_err(|e| instance.err(&e))?;
                for (id, v) in beats {
                    if v < version {
                        behind.insert(id, v);
                    }
                }
            }
            if behind.is_empty() {
                return Ok(true);
            }
            let stragglers: Vec<String> = behind
                .iter()
                .map(|(id, v)| format!("{id} (v{v})"))
                .collect();
            if Instant::now() > deadline {
                self.report(rebalance_step::CONVERGING, &stragglers).await?;
                warn!(stragglers = %stragglers.join(", "), "sidecars did not converge in time");
                return Ok(false);
            }
            if self.last_report.elapsed() > Duration::from_secs(1) {
                self.report(rebalance_step::CONVERGING, &stragglers).await?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Raises the fences of the moving instances (all of them, or the sources only) to
    /// `version` on every instance of the table, then closes the connections of older tables
    /// on the moving instances themselves.
    async fn fence(&mut self, version: u64, with_targets: bool) -> Result<(), Error> {
        let policy = self.mover.policy.clone();
        let fenced: Vec<String> = if with_targets {
            self.moving_instances()
        } else {
            let mut v: Vec<String> = self.steps.iter().map(|s| s.from.clone()).collect();
            v.sort();
            v.dedup();
            v
        };
        let raise: Vec<(String, u64)> = fenced.iter().map(|n| (n.clone(), version)).collect();
        let all: Vec<String> = self.resolver.instances().to_vec();
        for name in all {
            let must = fenced.contains(&name);
            if !must && !self.instances.contains_key(&name) {
                // Not connected (down): it hears the fences from the sidecars' rounds.
                continue;
            }
            let instance = self.instance(&name)?;
            match fence::raise(&mut instance.conn, &policy, &raise).await {
                Ok(_) => {}
                // The fence must hold where the data moves; elsewhere it is news for
                // sidecars, best effort.
                Err(e) if !must => {
                    warn!(instance = %name, error = %instance.err(&e), "could not record the fences")
                }
                Err(e) => return Err(instance.err(&e)),
            }
        }
        for name in fenced {
            let instance = self.instance(&name)?;
            let closed = fence::close_older_connections(&mut instance.conn, &policy, version)
                .await
                .map_err(|e| instance.err(&e))?;
            if closed > 0 {
                info!(instance = %name, closed, version, "closed connections of older routing tables");
            }
        }
        Ok(())
    }

    /// The migration entries of this plan, as the flip table publishes them (their epoch is
    /// the plan), each with its source and whether its target served the range already.
    fn migrations(&self) -> Vec<(String, Migration, bool)> {
        let plan = u64::try_from(self.config.plan_id).unwrap_or_default();
        let resolver = &self.resolver;
        self.steps
            .iter()
            .map(|s| {
                let category = resolver.categories()[usize::from(s.category)].name.clone();
                (
                    s.from.clone(),
                    Migration {
                        category,
                        start: s.range.start,
                        end: s.range.end,
                        from: s.from.clone(),
                        to: s.to.clone(),
                        epoch: plan,
                        target_serves: None,
                    },
                    s.target_serves,
                )
            })
            .collect()
    }

    /// Sets (`on`) or removes the importing markers of the ranges on their sources (only of
    /// the moves into ranges their target already serves, with `legacy_only`), and the
    /// imported markers on their targets (not of those moves: there the target's copies are
    /// not all the range's live data). An imported marker is set only after its importing
    /// marker and removed before it, so a target that has one holds only keys that moved or
    /// were written through the guard's redirect (`docs/protocol.md`, "Reading on the target
    /// first").
    async fn import(&mut self, on: bool, legacy_only: bool) -> Result<(), Error> {
        let mover = self.mover.clone();
        for (from, m, serves) in self.migrations() {
            if legacy_only && !serves {
                continue;
            }
            let marker = names::importing(&mover.policy, &m);
            let imported = (!serves).then(|| names::imported(&mover.policy, &m));
            if let (false, Some(imported)) = (on, &imported) {
                // Every sidecar routes by the final table by now: a marker left on a target
                // that does not answer is harmless (`docs/protocol.md`), not a failed cleanup.
                let target = self.instance(&m.to)?;
                if let Err(e) = mover
                    .set_marker(&mut target.conn, imported, false, false)
                    .await
                {
                    warn!(instance = %m.to, marker = %imported, error = %e, "could not remove an imported marker; it stays, harmless");
                }
            }
            let source = self.instance(&from)?;
            mover
                .set_marker(&mut source.conn, &marker, on, serves)
                .await
                .map_err(|e| move_error(marker.as_bytes(), e))?;
            if let (true, Some(imported)) = (on, &imported) {
                let target = self.instance(&m.to)?;
                mover
                    .set_marker(&mut target.conn, imported, true, false)
                    .await
                    .map_err(|e| move_error(imported.as_bytes(), e))?;
            }
        }
        Ok(())
    }
}

/// The parts of `range` of `category` whose replica (or outgoing replica) `table` does not name
/// `instance`.
fn not_replicated_on(
    table: &crate::routing::RoutingTable,
    category: &str,
    range: SlotRange,
    instance: &str,
) -> Vec<SlotRange> {
    let held: Vec<SlotRange> = table
        .category(category)
        .and_then(|c| c.replication.as_ref())
        .map(|r| {
            r.replicas
                .iter()
                .chain(&r.outgoing)
                .filter(|o| o.instance == instance)
                .filter_map(|o| o.range.intersection(&range))
                .collect()
        })
        .unwrap_or_default();
    range.minus(&held)
}

fn resolve_step(resolver: &Resolver, m: &MoveStatus) -> Result<Step, Error> {
    let category = resolver
        .categories()
        .iter()
        .position(|c| c.name == m.category)
        .ok_or_else(|| {
            Error::Setup(format!(
                "category {} is not in the routing table",
                m.category
            ))
        })?;
    let start =
        u16::try_from(m.start).map_err(|_| Error::Setup(format!("bad slot {}", m.start)))?;
    let end = u16::try_from(m.end).map_err(|_| Error::Setup(format!("bad slot {}", m.end)))?;
    let range = SlotRange::new(start, end);
    // A plan of an older operator (or one whose CRD is older) does not say: the table tells
    // (before the flip by its owners, after it by what its migration records, when it does);
    // after the flip the sources' markers win (`Job::serves_by_markers`): a table republished
    // mid-plan by a newer operator may record what an older one's guessed.
    let target_serves = m
        .target_serves
        .unwrap_or_else(|| super::plan::target_serves(resolver.table(), &m.category, range, &m.to));
    Ok(Step {
        category: category as CategoryId,
        range,
        from: m.from.clone(),
        to: m.to.clone(),
        target_serves,
        recorded: m.target_serves.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cache_policy::JOB_OWNED_REBALANCE_FIELDS;

    #[test]
    fn the_job_writes_exactly_the_fields_the_operator_leaves_to_it() {
        // A Job field the operator also writes would be overwritten by the operator's stale
        // copy at its next status write (server-side apply, forced).
        let patch = progress("Copying", Some((1, 2, 3)), &[], Some("slowed"));
        let mut written: Vec<&str> = patch
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        written.sort_unstable();
        let mut owned = JOB_OWNED_REBALANCE_FIELDS.to_vec();
        owned.sort_unstable();
        assert_eq!(written, owned);
    }
}
