//! The CachePolicy reconciler: from the policy and the instances it selects, compute the
//! routing table, purge stale copies from instances about to serve ranges again, publish the
//! routing ConfigMap (server-side apply, owned by the policy, version bumped only when the
//! content changes), drive rebalances, and report status, Events and metrics.
//!
//! A reconcile is a pipeline, one module a step; only fetch, apply, rebalance and status
//! touch the API or the instances:
//! 1. [`fetch`]: the policy, its instances (as [`InstanceView`]s), the table published before;
//! 2. [`build`]: the table placement asks for ([`build::plan_routing`], pure), shaped for a
//!    rebalance in progress ([`rebalance::table_to_publish`], pure);
//! 3. [`apply`]: bring the credentials Secret in step ([`credentials`]), purge stale copies,
//!    publish the ConfigMap, Events;
//! 4. [`rebalance`]: sample the instances, then follow the rebalance Job or plan and start one
//!    ([`job`] builds its manifest); [`planning`] gives the plan's estimate, and its
//!    measurement once it finished, to status;
//! 5. [`status`]: the status (pure), metrics, and the status write when it changed materially
//!    or the last one is older than the refresh interval ([`status::write_decision`]).
//!
//! Around it, the finalizer of [`cleanup`]: a deleted policy's Jobs and `redisfleet:` keys go
//! before it does; instances that leave a live policy lose its keys after step 3.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod credentials;
pub mod departures;
pub mod fences;
pub mod fetch;
pub mod job;
pub mod lost_data;
pub mod planning;
pub mod rebalance;
pub mod replica_checks;
pub mod seeding;
pub mod status;
pub mod unfreed;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use tracing::{debug, error, info, warn};

use crate::api::RedisInstance;
use crate::api::cache_policy::{
    CachePolicy, REBALANCE_NOW_ANNOTATION, RebalanceControl, RebalanceStatus, config_map_name,
};
use crate::rebalance::plan::PlanInput;
use crate::routing::table::{Failover, RoutingTable};

use super::context::Context;
use super::metrics::{PolicyLabels, error_variants};
use super::sampling::{NewestPlan, PolicySample, SampleCache, sample_instances};
use super::status_writes::refresh_interval;
use apply::Published;
use build::{InstanceView, plan_routing_with};
use job::JobSettings;
use status::UsageHistory;

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "CachePolicy";

/// Periodic reconcile: refreshes recommendations and catches anything a watch missed.
const RESYNC: Duration = Duration::from_secs(30);

/// How soon a policy with replicas being seeded is looked at again.
const SEEDING_LOOK: Duration = Duration::from_secs(1);

/// Reconcile errors; metric labels use the variant name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace.
    #[error("CachePolicy has no namespace")]
    MissingNamespace,
    /// Reading or writing the routing ConfigMap failed.
    #[error("routing ConfigMap {name}: {source}")]
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Reading or writing the policy's credentials Secret failed (the table waits for it).
    #[error("credentials Secret {name}: {source}")]
    Credentials {
        /// Secret name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Stale copies could not be removed from an instance that is about to serve them.
    #[error("purging stale keys on {instance} before routing to it: {message}")]
    Purge {
        /// Instance.
        instance: String,
        /// Cause (credentials redacted).
        message: String,
    },
    /// The keys a move had in transit could not be given back to its source, whose target
    /// died, before the table that gives the range back is published.
    #[error("giving the keys in transit back to {instance} before its range returns: {message}")]
    GiveBack {
        /// The move's source.
        instance: String,
        /// Cause (credentials redacted).
        message: String,
    },
    /// Writing status failed.
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    /// Creating or reading a rebalance Job failed.
    #[error("rebalance Job: {0}")]
    Rebalance(#[source] kube::Error),
    /// A deleted policy's cleanup is not finished (retried until the deadline).
    #[error("cleanup of a deleted policy unfinished: {0}")]
    Cleanup(String),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

error_variants!(Error {
    MissingNamespace,
    ConfigMap,
    Credentials,
    Purge,
    GiveBack,
    WriteStatus,
    Rebalance,
    Cleanup,
    Finalizer,
});

/// What the CachePolicy controller shares and remembers between reconciles.
pub struct PolicyContext {
    /// The scope's shared handles.
    pub shared: Arc<Context>,
    /// How rebalance Jobs are made.
    pub jobs: JobSettings,
    /// The kept samples of each policy's instances.
    samples: SampleCache,
    /// Memory of the instances over the last hour, for growth advice.
    usage: Mutex<UsageHistory>,
    /// When this process last wrote each policy's status.
    written: Mutex<HashMap<String, Instant>>,
    /// The instances each policy selected at its last reconcile: a deleted RedisInstance can
    /// still be reached to remove the policy's keys.
    selected: Mutex<HashMap<String, Vec<Arc<RedisInstance>>>>,
    /// Instances that left a policy, being fenced and cleaned (`cleanup`).
    departures: cleanup::Departures,
    /// Replicas being seeded (`seeding`).
    seedings: Arc<seeding::Seedings>,
    /// Periodic divergence checks of seeded replicas.
    replica_checks: Arc<replica_checks::ReplicaChecks>,
    /// Instances found without their data, and when that was last reported.
    lost_reported: lost_data::Reported,
    /// The instances each policy's wanted moves wait for, and the note last reported of them
    /// (`rebalance::Driven::held`).
    held_reported: Mutex<HashMap<String, (BTreeSet<String>, String)>>,
    /// Per policy, the moves the last reconcile decided to hand over (`build::handovers`):
    /// the next one publishes them, if they still may be.
    handovers: Mutex<HashMap<String, Vec<crate::rebalance::plan::Move>>>,
    /// How often an unchanged status is rewritten.
    status_refresh: Duration,
    /// Schema of the routing tables published.
    pub routing_schema: u32,
    started: Instant,
}

impl std::fmt::Debug for PolicyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyContext").finish_non_exhaustive()
    }
}

impl PolicyContext {
    /// The controller's context in a scope.
    pub fn new(
        shared: Arc<Context>,
        jobs: JobSettings,
        status_refresh: Duration,
        routing_schema: u32,
    ) -> Self {
        Self {
            shared,
            jobs,
            samples: SampleCache::default(),
            usage: Mutex::new(UsageHistory::default()),
            written: Mutex::new(HashMap::new()),
            selected: Mutex::new(HashMap::new()),
            departures: cleanup::Departures::default(),
            seedings: Arc::default(),
            replica_checks: Arc::default(),
            lost_reported: lost_data::Reported::default(),
            held_reported: Mutex::new(HashMap::new()),
            handovers: Mutex::new(HashMap::new()),
            status_refresh,
            routing_schema,
            started: Instant::now(),
        }
    }

    /// How long ago this process wrote the status of policy `key`, if it did.
    fn written_ago(&self, key: &str) -> Option<Duration> {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.get(key).map(Instant::elapsed)
    }

    fn wrote(&self, key: &str) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.insert(key.to_owned(), Instant::now());
    }

    /// Remembers the instances policy `key` selects now.
    fn remember(&self, key: &str, selected: &[Arc<RedisInstance>]) {
        let mut remembered = self.selected.lock().unwrap_or_else(|e| e.into_inner());
        remembered.insert(key.to_owned(), selected.to_vec());
    }

    /// Instance `name` as policy `key` last selected it.
    fn remembered(&self, key: &str, name: &str) -> Option<Arc<RedisInstance>> {
        let remembered = self.selected.lock().unwrap_or_else(|e| e.into_inner());
        remembered
            .get(key)?
            .iter()
            .find(|ri| ri.name_any() == name)
            .cloned()
    }

    /// Names of the instances policy `key` last selected.
    fn remembered_names(&self, key: &str) -> Vec<String> {
        let remembered = self.selected.lock().unwrap_or_else(|e| e.into_inner());
        remembered
            .get(key)
            .map(|v| v.iter().map(|ri| ri.name_any()).collect())
            .unwrap_or_default()
    }

    /// Forgets what this process remembers of deleted policy `key`.
    fn forget(&self, key: &str) {
        let mut remembered = self.selected.lock().unwrap_or_else(|e| e.into_inner());
        remembered.remove(key);
        self.seedings.forget(key);
        self.replica_checks.forget(key);
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.remove(key);
        let mut held = self.held_reported.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(key);
        let mut notices = self
            .shared
            .notices
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        notices.remove(key);
    }

    /// Records the memory of `views` for growth estimates.
    fn record_usage(&self, namespace: &str, views: &[InstanceView]) {
        let now = self.started.elapsed().as_secs_f64();
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.record(namespace, views, now);
    }

    /// Memory growth per instance in bytes per hour, where the history allows an estimate.
    fn growth(
        &self,
        namespace: &str,
        views: &[InstanceView],
    ) -> std::collections::BTreeMap<String, f64> {
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.growth(namespace, views)
    }
}

/// Reconciles one CachePolicy: under the finalizer [`cleanup::FINALIZER`], the pipeline while
/// it lives, [`cleanup::on_delete`] once it is deleted.
#[tracing::instrument(skip_all, fields(policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default()))]
pub async fn reconcile(policy: Arc<CachePolicy>, ctx: Arc<PolicyContext>) -> Result<Action, Error> {
    let _timer = ctx.shared.metrics.reconcile_timer(CONTROLLER);
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let api: kube::Api<CachePolicy> = kube::Api::namespaced(ctx.shared.client.clone(), &namespace);
    finalizer(&api, cleanup::FINALIZER, policy, |event| async {
        match event {
            finalizer::Event::Apply(policy) => reconcile_live(policy, &ctx).await,
            finalizer::Event::Cleanup(policy) => cleanup::on_delete(policy, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// The pipeline of a live policy.
async fn reconcile_live(policy: Arc<CachePolicy>, ctx: &PolicyContext) -> Result<Action, Error> {
    let shared = &ctx.shared;
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let name = policy.name_any();

    // Fetch.
    let Some(policy) = fetch::latest(shared, policy, &namespace).await? else {
        return Ok(Action::await_change());
    };
    let cm_name = config_map_name(&policy);
    let selected = fetch::selected_instances(shared, &policy, &namespace);
    let cm_api = kube::Api::namespaced(shared.client.clone(), &namespace);
    let current = fetch::read_published(&cm_api, &cm_name).await?;
    let (previous, previous_version) = (current.table.clone(), current.version);
    let key = format!("{namespace}/{name}");
    let labels = PolicyLabels {
        namespace: namespace.clone(),
        policy: name.clone(),
    };
    // Instances that answer without the replicated data they held are failed over like dead
    // ones for their replicated ranges (`lost_data`).
    let lost = lost_data::find(shared, &namespace, &key, &selected, previous.as_ref()).await;
    lost_data::report(
        shared,
        &ctx.lost_reported,
        &policy,
        &selected,
        &labels,
        &lost,
    )
    .await;
    let views: Vec<InstanceView> = selected
        .iter()
        .map(|ri| InstanceView {
            lost_data: lost.contains(&ri.name_any()),
            ..fetch::view_of(ri, &namespace)
        })
        .collect();
    ctx.record_usage(&namespace, &views);

    // An instance that left and is selected again is no longer fenced and emptied: that
    // stops before anything could give it ranges or a Job could import into it.
    ctx.departures
        .stop(&key, |name| selected.iter().any(|ri| ri.name_any() == name))
        .await;
    // The others listed as leaving are worked on from here (after a restart too), whatever
    // this reconcile does next.
    cleanup::clean_departed(ctx, &namespace, &key, &current.departures, &selected);

    // A plan whose source or target died is abandoned before anything else is decided.
    // Turning rebalancing off starts no new plan; one under way runs to its end (stopped
    // midway, its ranges would be routed to instances without their data).
    let mut rb = policy.status.as_ref().and_then(|s| s.rebalance.clone());
    // `redisfleet.io/rebalance: pause` holds the plan in progress: no flip is published, and
    // the Job moves no key until it is resumed. A cancel not decided yet holds the flip too
    // (the rebalance step below rolls the plan back, or refuses).
    if let Some(r) = rb.as_mut().filter(|r| r.is_active()) {
        r.paused = match RebalanceControl::of(&policy) {
            RebalanceControl::Pause => Some(true),
            RebalanceControl::Cancel if r.cancel_refused != Some(true) => Some(true),
            _ => None,
        };
    }
    let rebalance_on =
        policy.spec.balancing.rebalance.enabled || rb.as_ref().is_some_and(|r| r.is_active());
    let mut abandoned = Vec::new();
    let mut give_back = None;
    if rebalance_on {
        let before = rb.clone();
        (rb, give_back) = rebalance::abandon_dead_ends(
            ctx,
            &policy,
            rb,
            &views,
            &selected,
            previous.as_ref(),
            previous_version + 1,
        )
        .await?;
        abandoned = rebalance::dropped_moves(before.as_ref(), rb.as_ref());
    }
    if let Some(r) = rb.as_mut().filter(|r| !r.is_active()) {
        r.paused = None;
    }

    // Failovers that end by swapping roles: their servers are fenced on themselves first, at
    // the least version the next table can have (`docs/replication.md`).
    let swaps = match previous.as_ref() {
        Some(prev) => {
            let moves = rb
                .as_ref()
                .filter(|r| r.is_active())
                .map_or(&[][..], |r| r.moves.as_slice());
            let mut ready = build::replicas::ready_swaps(prev, &policy.spec, &views, moves);
            if RebalanceControl::of(&policy) != RebalanceControl::Run {
                // `redisfleet.io/rebalance: pause|cancel`: no failback, a swap included.
                ready.clear();
            }
            if !ready.is_empty() {
                ready = build::swaps_that_end(
                    &key,
                    &policy.spec,
                    &views,
                    previous.as_ref(),
                    rebalance_on,
                    ready,
                );
            }
            if ready.is_empty() {
                Vec::new()
            } else {
                apply::fence_swaps(
                    shared,
                    &namespace,
                    &key,
                    &selected,
                    ready,
                    previous_version + 1,
                )
                .await
            }
        }
        None => Vec::new(),
    };

    // Build, then apply.
    let planned = plan_routing_with(
        &key,
        &policy.spec,
        &views,
        previous.as_ref(),
        rebalance_on,
        &swaps,
    );
    let mut publish_error = None;
    let mut desired = None;
    let published = match planned.table {
        None => {
            publish_error = Some(if views.is_empty() {
                "no RedisInstance is selected by spec.instanceSelector".to_owned()
            } else {
                "no selected instance is usable yet (healthy, with a known capacity)".to_owned()
            });
            Published::unchanged(&current)
        }
        Some(planned_table) => {
            let (mut table, transition) = rebalance::table_to_publish(
                &planned_table,
                previous.as_ref(),
                &views,
                rb.as_ref(),
                rebalance_on,
            );
            desired = Some(planned_table);
            // The handovers the last reconcile decided go out now (before replica placement,
            // which names each new owner its range's replica), if they still may.
            let handovers = ctx
                .handovers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key)
                .unwrap_or_default();
            // Handovers that can no longer swap (their target drains or died; rebalancing
            // off or cancelled) go back to their sources, which serve them still.
            for f in build::handovers::give_back_stalled(
                &mut table,
                previous.as_ref(),
                &policy.spec,
                &views,
                policy.spec.balancing.rebalance.enabled
                    && RebalanceControl::of(&policy) != RebalanceControl::Cancel,
                RebalanceControl::of(&policy) == RebalanceControl::Pause,
            ) {
                info!(category = %f.category, start = f.start, end = f.end, source = %f.to, target = %f.from, "a handover is given back to its source: it can no longer end by swapping roles");
            }
            if let Some(prev) = previous.as_ref()
                && policy.spec.balancing.rebalance.enabled
                && RebalanceControl::of(&policy) == RebalanceControl::Run
                && rb.as_ref().is_none_or(|r| !r.is_active())
            {
                for m in &handovers {
                    if build::handovers::may_hand_over(prev, &policy.spec, &views, m)
                        && build::handovers::hand_over(&mut table, m)
                    {
                        info!(category = %m.category, start = m.range.start, end = m.range.end, from = %m.from, to = %m.to, "handing a replicated range over: its new owner is seeded as a third copy, then the two swap roles");
                    }
                }
            }
            let moves = rb
                .as_ref()
                .filter(|r| r.is_active())
                .map_or(&[][..], |r| r.moves.as_slice());
            build::replicas::place_replicas(
                &mut table,
                &build::replicas::ReplicaInputs {
                    spec: &policy.spec,
                    instances: &views,
                    previous: previous.as_ref(),
                    moves,
                    seeded: &ctx.seedings.finished(&key),
                    swaps_held: RebalanceControl::of(&policy) != RebalanceControl::Run,
                },
            );
            table.schema_version = ctx.routing_schema;
            let mut return_previous = false;
            let swapped = previous
                .as_ref()
                .map(|p| build::replicas::swapped_entries(p, &table))
                .unwrap_or_default();
            // Exactly the fenced swaps that this table ends end by swapping roles. Anything
            // else is a bug: an entry ended without its server named the range's seeded
            // replica (the range left without a copy, the server's copies freed), or a swap
            // whose server was not fenced (two writers of one range).
            let ended = |f: &&Failover| !table.failover.contains(f);
            let unswapped = swaps.iter().filter(ended).find(|f| !swapped.contains(f));
            let unfenced = swapped.iter().find(|f| !swaps.contains(f));
            if let Some(f) = unswapped.or(unfenced) {
                error!(entry = ?f, "a failover's end does not match the swaps fenced for it; the published table stays");
                publish_error = Some(format!(
                    "the failover of {} {}-{} from {} to {} did not end as its fenced swap; the published table stays",
                    f.category, f.start, f.end, f.from, f.to
                ));
                return_previous = true;
            }
            if let Err(e) = table.validate() {
                // A bug, never a table: sidecars would refuse it and the next reconcile could
                // not read it back (losing every hold and failover it knows of).
                error!(error = %e, "the routing table built is invalid; the published one stays");
                publish_error = Some(format!(
                    "the routing table built is invalid ({e}); the published one stays"
                ));
                return_previous = true;
            }
            // What a plan's transition wants out, to find it out already (below).
            let wanted = (transition.is_some() && !return_previous).then(|| table.content_hash());
            let published = if return_previous {
                Published::unchanged(&current)
            } else {
                apply::publish_routing(
                    shared,
                    &policy,
                    &namespace,
                    &selected,
                    &current,
                    &ctx.departures.finished(&key),
                    &lost,
                    table,
                    give_back.as_ref().map(|g| g.run(ctx, &selected)),
                )
                .await?
            };
            // A transition is recorded with the version that carried it out: this one's, or
            // — when an operator stopped between writing the ConfigMap and the status — the
            // version already out with the very same content. (Only ever recorded on a new
            // version, the plan waited for a table nobody would publish again: its attempts
            // redid the copy under the final owners, time after time.)
            if let (Some(r), Some(t), Some(out)) = (rb.as_mut(), transition, &published.table)
                && (published.now || wanted.is_some_and(|w| out.content_hash() == w))
            {
                rebalance::record_transition(r, t, out.version);
            }
            published
        }
    };
    let published_now = published.now;
    let held_back = !published.held_back.is_empty();
    shared
        .metrics
        .failovers_held_back
        .get_or_create(&labels)
        .set(i64::try_from(published.held_back.len()).unwrap_or(i64::MAX));
    // What an instance holds while copies are left to free there is not data to move.
    let views: Vec<InstanceView> = views
        .into_iter()
        .map(|v| InstanceView {
            copies_to_free: published.copies_to_free.contains(&v.name),
            ..v
        })
        .collect();
    let departures = published.departures;
    let published = published.table;
    if let Some(t) = &published {
        apply::fence_returning_instances(shared, &namespace, &selected, t).await;
        if !held_back && publish_error.is_none() {
            lost_data::mark_again(shared, &namespace, &key, &selected, t, &lost).await;
        }
    }
    // A move given back to its source loses the source's importing marker only now that the
    // table that takes its range off the target is published.
    if let Some(now) = &published {
        let mut candidates = abandoned;
        if published_now && let Some(before) = &previous {
            candidates.extend(before.migrating.iter().cloned());
        }
        rebalance::unmark_given_back(ctx, &policy, &selected, &candidates, now).await;
    }
    // Instances a table no longer names are fenced at the version of the first table without
    // them and lose the policy's other keys (in the background, until they answer), as the
    // ConfigMap lists them: also after a restart.
    cleanup::clean_departed(ctx, &namespace, &key, &departures, &selected);
    ctx.remember(&key, &selected);

    // Rebalance: samples (memory per category, sidecar heartbeats), then rebalance Jobs. An
    // instance whose memory moved a point since its sample is sampled again, so planning
    // works from a sample taken after the change that woke us.
    // While a plan moves data, no plan is made: a sample serves status for a while longer.
    // (The plan as this reconcile left it: one given up just now is followed by planning.)
    let newest = NewestPlan::of(rb.as_ref());
    let sample = match &published {
        Some(t) => {
            sample_instances(
                &shared.secrets,
                &shared.connections,
                &ctx.samples,
                &key,
                &namespace,
                &selected,
                t,
                &newest,
            )
            .await
        }
        None => PolicySample::default(),
    };
    debug!(categories = ?sample.category_bytes, sidecars = sample.sidecars.len(), "sampled");
    // Replicas named by the published table get what their writer held before.
    let seeding = match &published {
        Some(t) => {
            ctx.seedings
                .drive(
                    &key,
                    &shared.secrets,
                    &namespace,
                    &selected,
                    t,
                    sample.heartbeats_read.then_some(&sample.sidecars),
                    ctx.jobs.converge_timeout,
                )
                .await
        }
        None => seeding::SeedingProgress::default(),
    };
    if let Some(note) = &seeding.overdue {
        warn!(%note, "replicas seeded ahead of sidecars still behind");
        status::seeding_overdue_event(shared, &policy, note).await;
    }
    // Seeded replicas are compared with their writers every few minutes.
    if let Some(t) = &published {
        use kube::Resource;
        ctx.replica_checks
            .drive(
                shared,
                &key,
                &namespace,
                &selected,
                t,
                sample.heartbeats_read.then_some(&sample.sidecars),
                &labels,
                policy.object_ref(&()),
            )
            .await;
    }
    let mut held = None;
    if rebalance_on && let (Some(table), Some(desired)) = (&published, &desired) {
        let driven = rebalance::drive(ctx, &policy, rb, table, desired, &views, &sample).await?;
        rb = driven.rebalance;
        held = driven.held.map(|note| ("HeldBack", note));
        if let Some(waiting) = driven.waiting {
            held = Some(("WaitingForTable", waiting));
        }
        if let Some(handing_over) = driven.handing_over {
            held = Some((status::HANDING_OVER, handing_over));
        }
        debug!(rebalance = ?rb.as_ref().map(|r| (&r.phase, r.plan_id, &r.job)), "rebalance driven");
        if let Some(r) = rb.as_mut() {
            note_balance(r, &policy, table, desired, &views, &selected, &sample);
        }
    }

    // Status.
    let growth = ctx.growth(&namespace, &views);
    let observation = status::PolicyObservation {
        now: Timestamp::now(),
        generation: policy.metadata.generation,
        config_map: &cm_name,
        published: published.as_ref(),
        published_now,
        publish_error,
        instances: &views,
        problems: &planned.problems,
        threshold: policy.spec.balancing.capacity_threshold,
        growth: &growth,
    };
    let mut next = status::policy_status(policy.status.as_ref(), &observation);
    next.rebalance = rb;
    next.usage = sample.usage();
    next.replication = published
        .as_ref()
        .map(build::replicas::summary)
        .unwrap_or_default();
    next.sidecars = sample.sidecars(published.as_ref());
    status::set_rebalancing_condition(
        &mut next,
        held.as_ref().map(|(reason, note)| (*reason, note.as_str())),
        policy.metadata.generation,
        Timestamp::now(),
    );
    if let Some(replicated) =
        status::set_replicated_condition(&mut next, policy.metadata.generation, Timestamp::now())
    {
        status::replication_event(shared, &policy, &replicated).await;
    }
    status::record_metrics(&shared.metrics, &labels, published.as_ref(), &next);
    shared
        .metrics
        .departing_instances
        .get_or_create(&labels)
        .set(ctx.departures.waiting(&key, &departures, &selected) as i64);
    match planning::mean_usage(&views) {
        Some(mean) => {
            shared
                .metrics
                .mean_usage_ratio
                .get_or_create(&labels)
                .set(mean);
        }
        None => {
            shared.metrics.mean_usage_ratio.remove(&labels);
        }
    }
    let capacities = views
        .iter()
        .filter_map(|v| Some((v.name.clone(), v.capacity_bytes?)))
        .collect();
    let decision = status::write_decision(
        policy.status.as_ref(),
        &next,
        &capacities,
        ctx.written_ago(&key),
        refresh_interval(ctx.status_refresh, &key),
    );
    shared.metrics.status_write(CONTROLLER, decision.as_str());
    if decision.writes() {
        status::write(shared, &policy, &namespace, &next).await?;
        ctx.wrote(&key);
    }
    if held_back {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if seeding.pending > 0 {
        debug!(
            ranges = seeding.pending,
            sidecars_behind = ?seeding.behind,
            "replicas being seeded"
        );
        // A seeding finishes in a task of its own: look again soon to publish that it did.
        return Ok(Action::requeue(SEEDING_LOOK));
    }
    // Replicas: the data markers are read at each reconcile, so an instance that lost its
    // data is found within this much (`lost_data`).
    let resync = if published
        .as_ref()
        .is_some_and(|t| !build::replicas::must_hold_marker(t).is_empty())
    {
        lost_data::LOOK_EVERY
    } else {
        RESYNC
    };
    Ok(Action::requeue(planning::next_look(
        next.rebalance.as_ref(),
        policy.spec.balancing.rebalance.cooldown.get(),
        Timestamp::now(),
        resync,
    )))
}

/// Gives a plan that just started the planner's estimate (from the table and sample it was
/// planned from), and a finished one its measurement once the instances' status shows it.
fn note_balance(
    r: &mut RebalanceStatus,
    policy: &CachePolicy,
    published: &RoutingTable,
    desired: &RoutingTable,
    views: &[InstanceView],
    selected: &[Arc<RedisInstance>],
    sample: &PolicySample,
) {
    if planning::wants_estimate(r) {
        let loads = planning::loads(views);
        let tiers = planning::tiers(&policy.spec);
        let input = PlanInput {
            current: published,
            desired: Some(desired),
            instances: &loads,
            category_bytes: &sample.category_bytes,
            categories: &tiers,
            threshold_percent: planning::threshold_percent(&policy.spec),
            force: r
                .reason
                .as_deref()
                .is_some_and(|why| why.contains(REBALANCE_NOW_ANNOTATION)),
        };
        let moves = rebalance::from_status(&r.moves);
        r.balance = Some(planning::estimated_balance(
            &input,
            &sample.category_keys,
            &moves,
        ));
    } else if planning::wants_measurement(r)
        && let Some(finished) = &r.finished_at
    {
        let probes: Vec<_> = selected
            .iter()
            .map(|ri| {
                (
                    ri.status
                        .as_ref()
                        .and_then(|s| s.last_probe_time.as_ref())
                        .map(|t| t.0),
                    ri.spec.health.interval.get(),
                )
            })
            .collect();
        if planning::settled_since(finished.0, Timestamp::now(), &probes)
            && let Some(balance) = r.balance.as_mut()
        {
            planning::record_measurement(balance, views);
        }
    }
}

/// Requeues after an error with a short delay.
pub fn error_policy(policy: Arc<CachePolicy>, error: &Error, ctx: Arc<PolicyContext>) -> Action {
    warn!(policy = %policy.name_any(), %error, "reconcile failed");
    ctx.shared
        .metrics
        .reconcile_error(CONTROLLER, error.variant());
    if matches!(error, Error::Cleanup(_)) {
        return Action::requeue(cleanup::CLEANUP_RETRY);
    }
    Action::requeue(Duration::from_secs(2))
}
