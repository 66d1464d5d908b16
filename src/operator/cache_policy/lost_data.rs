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
//! again. Once a table that does so is published, the marker is written again
//! ([`mark_again`]) where the table still needs it — there the loss could not be repaired (no
//! replica answers), and is only reported.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

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

/// The instances `table` needs the marker on that answer without it. An instance that does
/// not answer, or whose answer cannot be read, is not counted (its probes tell the rest).
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
    for name in must_hold_marker(table) {
        let Some(ri) = selected.iter().find(|ri| ri.name_any() == name) else {
            continue;
        };
        let serving = ri
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.serves_traffic());
        if !serving {
            continue;
        }
        let Ok(mut conn) = fences::connect(ctx, namespace, ri).await else {
            continue;
        };
        let timeout = ri.spec.health.timeout.get().max(Duration::from_millis(200));
        let exists = redis::cmd("EXISTS").arg(&marker).clone();
        match tokio::time::timeout(timeout, exists.query_async::<i64>(&mut conn)).await {
            Ok(Ok(0)) => {
                lost.insert(name);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(instance = %name, error = %e, "could not read the data marker"),
            Err(_) => debug!(instance = %name, "reading the data marker timed out"),
        }
    }
    lost
}

/// Reports the instances that lost their data: a Warning Event on the policy and the metric
/// `redisfleet_instances_lost_data_total`.
pub async fn report(
    ctx: &Context,
    policy: &crate::api::cache_policy::CachePolicy,
    labels: &PolicyLabels,
    lost: &BTreeSet<String>,
) {
    use kube::Resource;
    for name in lost {
        warn!(instance = %name, "the instance answers without the replicated data it held (restarted empty or flushed): its replicated ranges fail over to their replicas");
        ctx.metrics.instance_lost_data(labels);
        let event = Event {
            type_: EventType::Warning,
            reason: "InstanceLostData".to_owned(),
            note: Some(format!(
                "{name} answers without the replicated data it held (restarted empty or flushed): its replicated ranges fail over to their replicas and come back by a failback, its replicas are seeded again"
            )),
            action: "FailOver".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
            warn!(error = %e, "recording an event failed");
        }
    }
}

/// Writes the marker again on the instances of `lost` that `published` (the table published
/// after they were found) still needs it on: what they lost could not go elsewhere.
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
    let needed = must_hold_marker(published);
    for name in lost.intersection(&needed) {
        let Some(ri) = selected.iter().find(|ri| ri.name_any() == *name) else {
            continue;
        };
        warn!(instance = %name, "no replica answers for some of the ranges of an instance that lost its data: they stay on it, their data is lost");
        let result = async {
            let mut conn = fences::connect(ctx, namespace, ri).await?;
            mark(&mut conn, policy).await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = result {
            warn!(instance = %name, error = %e, "could not write the data marker again");
        }
    }
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
