//! Instances that lost their data while they answer (`docs/replication.md`, "An instance that
//! lost its data"): a hosted Redis restarted without persistence within the probe threshold,
//! a `FLUSHALL`, a managed failover to an empty node. The probes see nothing wrong, yet its
//! replicated ranges would be served empty and a seeding from it would empty their replicas.
//!
//! A seeding writes the marker [`names::holds`] on both ends before it copies anything, and
//! every slot whose replica is seeded had its server and replica seeded that way
//! ([`must_hold_marker`]). Each reconcile checks the marker on those instances; one that
//! answers without it lost its data: the build fails its replicated ranges over to their
//! replicas as if it had died (the failback then brings the data home) and seeds its replicas
//! again. Once a table that does so is published, the instance is fenced at it and the
//! marker is written again ([`mark_again`]) where the table still needs it — there the loss
//! could not be repaired (no replica answers), and is only reported.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};
use tracing::{debug, warn};

use crate::api::RedisInstance;
use crate::operator::context::Context;
use crate::operator::metrics::PolicyLabels;
use crate::redis::protocol::names;
use crate::routing::table::RoutingTable;

use super::build::replicas::must_hold_marker;
use super::fences;

/// How often a policy with seeded replicas is reconciled at least, so that an instance that
/// lost its data is found within this much (its writes meanwhile see it empty).
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// The instances `table` needs the marker on that answer without it. An instance that does
/// not answer, or whose answer cannot be read, is not counted (its probes tell the rest).
///
/// When none of them has it — a policy replicated by a release that wrote no marker, or every
/// one of them lost its data at once, when there is nothing to fail over to anyway — the
/// markers are written instead (with a warning), so an upgrade fails nothing over; but only
/// once every one of them answered (one that could not be asked may be the one holding it).
pub async fn find(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    selected: &[Arc<RedisInstance>],
    table: Option<&RoutingTable>,
) -> BTreeSet<String> {
    let mut lost = BTreeSet::new();
    let Some(table) = table else {
        return lost;
    };
    let marker = names::holds(policy);
    // Instances that answered with the marker, and those whose marker could not be read.
    let (mut marked, mut unread) = (0, 0);
    for name in must_hold_marker(table) {
        let Some(ri) = selected.iter().find(|ri| ri.name_any() == name) else {
            unread += 1;
            continue;
        };
        let serving = ri
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.serves_traffic());
        if !serving {
            unread += 1;
            continue;
        }
        let Ok(mut conn) = fences::connect(ctx, namespace, ri).await else {
            unread += 1;
            continue;
        };
        let timeout = ri.spec.health.timeout.get().max(Duration::from_millis(200));
        // GET, not EXISTS: a read keeps the marker recent for an LRU eviction policy.
        let read = redis::cmd("GET").arg(&marker).clone();
        match tokio::time::timeout(timeout, read.query_async::<Option<String>>(&mut conn)).await {
            Ok(Ok(None)) => {
                lost.insert(name);
            }
            Ok(Ok(Some(_))) => marked += 1,
            Ok(Err(e)) => {
                unread += 1;
                debug!(instance = %name, error = %e, "could not read the data marker");
            }
            Err(_) => {
                unread += 1;
                debug!(instance = %name, "reading the data marker timed out");
            }
        }
    }
    if marked == 0 && unread > 0 {
        // Nobody shows the marker, and not every instance could be asked: an upgrade or a loss
        // cannot be told apart yet. Nothing is failed over, nothing written; ask again.
        return BTreeSet::new();
    }
    if marked == 0 && !lost.is_empty() {
        warn!(instances = ?lost, "no instance holding replicated data has its data marker (replicas seeded by an earlier release): writing them");
        for name in std::mem::take(&mut lost) {
            if let Some(ri) = selected.iter().find(|ri| ri.name_any() == name)
                && let Err(e) = mark_on(ctx, namespace, policy, ri).await
            {
                warn!(instance = %name, error = %e, "could not write the data marker");
            }
        }
    }
    lost
}

/// When each instance's loss was last reported, per policy: a loss whose failover waits (held
/// back, a failed publish) is found again at each reconcile, and reported once a minute.
#[derive(Debug, Default)]
pub struct Reported {
    at: Mutex<HashMap<(String, String), Instant>>,
}

/// How often the same loss is reported again while it is not failed over.
const REPORT_AGAIN: Duration = Duration::from_secs(60);

impl Reported {
    /// The instances of `lost` not reported for `policy` within [`REPORT_AGAIN`]; they count
    /// as reported now.
    fn fresh(&self, policy: &str, lost: &BTreeSet<String>) -> Vec<String> {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        at.retain(|_, when| when.elapsed() < REPORT_AGAIN);
        lost.iter()
            .filter(|name| {
                let key = (policy.to_owned(), (*name).clone());
                if at.contains_key(&key) {
                    return false;
                }
                at.insert(key, Instant::now());
                true
            })
            .cloned()
            .collect()
    }
}

/// Reports the instances that lost their data: a Warning Event on the policy and the metric
/// `redisfleet_instances_lost_data_total`.
pub async fn report(
    ctx: &Context,
    reported: &Reported,
    policy: &crate::api::cache_policy::CachePolicy,
    selected: &[Arc<RedisInstance>],
    labels: &PolicyLabels,
    lost: &BTreeSet<String>,
) {
    use kube::Resource;
    let key = format!("{}/{}", labels.namespace, labels.policy);
    for name in reported.fresh(&key, lost) {
        // The instance is the Event's related object: the recorder folds Events of one
        // reason on one object into a series that keeps the first note.
        let related = selected
            .iter()
            .find(|ri| ri.name_any() == name)
            .map(|ri| ri.object_ref(&()));
        warn!(instance = %name, "the instance answers without the replicated data it held (restarted empty or flushed): its replicated ranges fail over to their replicas");
        ctx.metrics.instance_lost_data(labels);
        let event = Event {
            type_: EventType::Warning,
            reason: "InstanceLostData".to_owned(),
            note: Some(format!(
                "{name} answers without the replicated data it held (restarted empty or flushed): its replicated ranges fail over to their replicas and come back by a failback, its replicas are seeded again"
            )),
            action: "FailOver".to_owned(),
            secondary: related,
        };
        if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
            warn!(error = %e, "recording an event failed");
        }
    }
}

/// After `published` (the table published once they were found): fences each instance of
/// `lost` at its version on itself (closing the connections of older tables, whose sidecars
/// may still route replicated ranges there), and writes the marker again where `published`
/// still needs it — what they lost could not go elsewhere.
pub async fn mark_again(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    selected: &[Arc<RedisInstance>],
    published: &RoutingTable,
    lost: &BTreeSet<String>,
) {
    if lost.is_empty() {
        return;
    }
    for name in lost {
        let Some(ri) = selected.iter().find(|ri| ri.name_any() == *name) else {
            continue;
        };
        if let Err(e) = fences::fence_returning(ctx, namespace, policy, ri, published.version).await
        {
            warn!(instance = %name, error = %e, "could not fence an instance that lost its data");
        }
    }
    let needed = must_hold_marker(published);
    for name in lost.intersection(&needed) {
        let Some(ri) = selected.iter().find(|ri| ri.name_any() == *name) else {
            continue;
        };
        warn!(instance = %name, "no replica answers for some of the ranges of an instance that lost its data: they stay on it, their data is lost");
        if let Err(e) = mark_on(ctx, namespace, policy, ri).await {
            warn!(instance = %name, error = %e, "could not write the data marker again");
        }
    }
}

/// Writes the marker of `policy`'s replicated data on `ri`, over the kept connection; errors
/// carry no credentials.
async fn mark_on(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    ri: &RedisInstance,
) -> Result<(), String> {
    let mut conn = fences::connect(ctx, namespace, ri).await?;
    mark(&mut conn, policy).await.map_err(|e| e.to_string())
}

/// Writes the marker of `policy`'s replicated data on an instance.
pub async fn mark(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    policy: &str,
) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(names::holds(policy))
        .arg("1")
        .query_async(conn)
        .await
}
