//! Apply, the step of a CachePolicy reconcile that writes: the credentials Secret the table
//! needs (first, so it is there when the table arrives), the routing ConfigMap (a new version
//! only when the content changed), and on the instances the deletion of stale copies
//! before a table routes ranges to them — and of copies no instance serves any more after it.
//! Events say what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use redis::aio::ConnectionLike;
use serde_json::json;
use tracing::{info, warn};

use crate::api::FIELD_MANAGER;
use crate::api::cache_policy::{CachePolicy, config_map_name};
use crate::api::redis_instance::{InstancePhase, RedisInstance};
use crate::operator::context::Context;
use crate::operator::metrics::PolicyLabels;
use crate::redis::connect::redact;
use crate::redis::keys::{delete_ranges, in_ranges, prefix_pattern};
use crate::redis::protocol::heartbeat::NOTICE_WAIT;
use crate::redis::protocol::names;
use crate::routing::config_map::contents;
use crate::routing::keyspace::Resolver;
use crate::routing::slots::SlotRange;
use crate::routing::table::{Failover, Migration};
use crate::routing::table::{RoutingTable, VERSION_ANNOTATION};

use super::Error;
use super::build;
use super::credentials;
use super::departures::{DEPARTURES_ANNOTATION, Departures};
use super::fences;
use super::unfreed::{UNFREED_ANNOTATION, Unfreed};

/// Instances purged at the same time (each purge scans one instance): a join at 1 000
/// instances gives ranges to nearly all of them, and one after the other delays its table by
/// the sum of their scans.
const PURGES_AT_ONCE: usize = 16;

/// What the apply step left published.
#[derive(Debug)]
pub struct Published {
    /// The table in the routing ConfigMap (the previous one when nothing changed).
    pub table: Option<RoutingTable>,
    /// Whether this reconcile published a new version.
    pub now: bool,
    /// Instances whose failover was held back because they answer again (none: nothing held
    /// back): reconcile again soon.
    pub held_back: Vec<String>,
    /// Instances that still hold copies of ranges no table routes to them (`super::unfreed`).
    pub copies_to_free: BTreeSet<String>,
    /// Instances leaving the policy, as the ConfigMap lists them now (`super::departures`).
    pub departures: Departures,
}

impl Published {
    /// Nothing published by this reconcile: what the ConfigMap held stays.
    pub fn unchanged(current: &super::fetch::Current) -> Self {
        Self {
            table: current.table.clone(),
            now: false,
            held_back: Vec::new(),
            copies_to_free: current.unfreed.instances(),
            departures: current.departures.clone(),
        }
    }
}

/// The instances `next` fails over that `previous` did not. A handover fails nothing over, and
/// neither does an entry whose owner did not serve its range in `previous` (a handover's new
/// owner, once the range's server failed in turn): no sidecar routed that range to it.
fn newly_failed_over(previous: Option<&RoutingTable>, next: &RoutingTable) -> Vec<String> {
    let before: std::collections::BTreeSet<&str> = previous
        .map(|p| {
            p.failover
                .iter()
                .filter(|f| !f.handover)
                .map(|f| f.from.as_str())
                .collect()
        })
        .unwrap_or_default();
    let served = previous.map(build::served_ranges);
    let served_before = |f: &Failover| {
        served.as_ref().is_none_or(|s| {
            s.get(&f.from).is_some_and(|ranges| {
                ranges
                    .iter()
                    .any(|(c, r)| *c == f.category && r.overlaps(&f.range()))
            })
        })
    };
    let mut out: Vec<String> = next
        .failover
        .iter()
        .filter(|f| !f.handover && served_before(f))
        .map(|f| f.from.as_str())
        .filter(|f| !before.contains(f))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The migrations `previous` runs that `next` does not: moves given up (a dead end) or
/// finished. Publishing `previous` again would run them once more, although their plan let
/// them go: a move given up for its dead target, run again, has its target take writes for the
/// keys it holds that the next table drops with its copies of the range.
fn migrations_let_go<'a>(previous: &'a RoutingTable, next: &RoutingTable) -> Vec<&'a Migration> {
    previous
        .migrating
        .iter()
        .filter(|m| !next.migrating.iter().any(|n| n.same_range_and_ends(m)))
        .collect()
}

/// Instances that serve ranges in `previous` that `next` routes elsewhere while they are
/// unreachable, or answer without the data they held (`lost`: a failover target that
/// restarted empty, whose ranges go to their replica or back to their owner — sidecars still
/// on `previous` would otherwise go on writing there, unfenced, after the others serve them).
fn handed_off_from_unusable(
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
    selected: &[Arc<RedisInstance>],
    lost: &BTreeSet<String>,
) -> Vec<String> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    build::newly_served(Some(next), previous)
        .into_keys()
        .filter(|name| {
            lost.contains(name)
                || selected.iter().any(|ri| {
                    ri.name_any() == *name
                        && ri.status.as_ref().and_then(|s| s.phase)
                            == Some(InstancePhase::Unreachable)
                })
        })
        .collect()
}

/// Whether every failover entry of `name` in `next` gives back the ranges of a failback of
/// `previous` that ended without finishing (`build::failovers_in`): the owner answers, but its
/// copies of those ranges are stale, so that failover is published all the same (after the
/// notice, as any other).
fn only_restores_failbacks(
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
    name: &str,
) -> bool {
    let Some(previous) = previous else {
        return false;
    };
    next.failover.iter().filter(|f| f.from == name).all(|f| {
        previous
            .migrating
            .iter()
            .any(|m| f.given_back_by(&m.category, SlotRange::new(m.start, m.end), &m.from, &m.to))
    })
}

/// Fences every failed-over instance that answers again at `table`'s version, on itself (with
/// the connections of older tables closed): a sidecar that missed the failover cannot write
/// there (`docs/protocol.md`).
pub async fn fence_returning_instances(
    ctx: &Context,
    namespace: &str,
    selected: &[Arc<RedisInstance>],
    table: &RoutingTable,
) {
    // A handover's new owner was never routed its range: nothing to fence it against.
    let mut from: Vec<&str> = table
        .failover
        .iter()
        .filter(|f| !f.handover)
        .map(|f| f.from.as_str())
        .collect();
    from.sort_unstable();
    from.dedup();
    let returned: Vec<&Arc<RedisInstance>> = from
        .into_iter()
        .filter_map(|name| selected.iter().find(|ri| ri.name_any() == name))
        .filter(|ri| {
            let phase = ri.status.as_ref().and_then(|s| s.phase);
            matches!(phase, Some(p) if p.serves_traffic())
        })
        .collect();
    let key = |ri: &RedisInstance| (table.policy.clone(), ri.name_any());
    {
        // An instance no longer back (down again, or its entries gone) is fenced at the table
        // of its next return.
        let mut fenced = ctx
            .fenced_on_return
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        fenced.retain(|(policy, name), _| {
            *policy != table.policy || returned.iter().any(|ri| ri.name_any() == *name)
        });
    }
    for ri in returned {
        let version = *ctx
            .fenced_on_return
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key(ri))
            .or_insert(table.version);
        match fences::fence_returning(ctx, namespace, &table.policy, ri, version).await {
            Ok(()) => {}
            Err(e) => {
                warn!(instance = %ri.name_any(), error = %e, "could not fence a returning instance")
            }
        }
    }
}

/// How long the operator waits between fencing a swap's server and building the table that
/// ends it: a `sync` result's deadline, and a second for the sidecars' scheduling.
const SWAP_WAIT: Duration =
    Duration::from_secs(crate::redis::protocol::replica::SYNC_RESULT_DEADLINE.as_secs() + 1);

/// Of the failovers `ready` to end by swapping roles ([`build::replicas::ready_swaps`]), those
/// whose server is now fenced on itself at `version`, the least version of the next table: the
/// build ends only those. A server that cannot be fenced keeps serving its range (the swap
/// waits; the reconcile goes on).
pub async fn fence_swaps(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    selected: &[Arc<RedisInstance>],
    ready: Vec<Failover>,
    version: u64,
) -> Vec<Failover> {
    let mut servers: Vec<&str> = ready.iter().map(|f| f.to.as_str()).collect();
    servers.sort_unstable();
    servers.dedup();
    let mut fenced = BTreeSet::new();
    for name in servers {
        let Some(ri) = selected.iter().find(|ri| ri.name_any() == name) else {
            continue;
        };
        match fences::fence_for_swap(ctx, namespace, policy, ri, version).await {
            Ok(()) => {
                info!(instance = %name, version, "fenced the instance on itself: ranges it serves go to their owners by swapping roles (a failback, or a handover)");
                fenced.insert(name.to_owned());
            }
            Err(e) => {
                warn!(instance = %name, error = %e, "could not fence the instance; its ranges stay with it until it can be (the failback by swapping roles waits)");
            }
        }
    }
    if !fenced.is_empty() {
        // A `Sync` write that ran on a fenced server before its fence may still have its
        // result on the way to the owner; a sidecar acknowledges it only if it got there
        // within `SYNC_RESULT_DEADLINE` of sending the write. The owner takes no write under
        // the new table until every such result is there, or an `INCR` there could be built on
        // the value before it — the late result, of an older epoch, then ignored although
        // acknowledged.
        info!(servers = ?fenced, wait = ?SWAP_WAIT, "waiting for results still on their way before the failovers end by swapping roles");
        tokio::time::sleep(SWAP_WAIT).await;
    }
    ready
        .into_iter()
        .filter(|f| fenced.contains(&f.to))
        .collect()
}

/// What decides whether a failover waits for an instance that answers again.
struct Returning<'a> {
    ctx: &'a Context,
    namespace: &'a str,
    selected: &'a [Arc<RedisInstance>],
    previous: Option<&'a RoutingTable>,
    table: &'a RoutingTable,
    lost: &'a BTreeSet<String>,
}

impl Returning<'_> {
    /// Whether `name`'s failover may wait for it: it kept its data, the failover does more
    /// than restore failbacks', and it answers right now.
    async fn may_wait(&self, name: &str) -> bool {
        !only_restores_failbacks(self.previous, self.table, name)
            && !self.lost.contains(name)
            && match self.selected.iter().find(|ri| ri.name_any() == name) {
                Some(ri) => fences::answers(self.ctx, self.namespace, ri).await,
                None => false,
            }
    }

    /// The first of `names` (failed over by `table`) whose failover may wait.
    async fn first_answering(&self, names: &[String]) -> Option<String> {
        for name in names {
            if self.may_wait(name).await {
                return Some(name.clone());
            }
        }
        None
    }

    /// Whether every one of `names` (a notice's) is failed over by `table` and may wait.
    async fn all_answering(&self, names: &[String]) -> bool {
        let failed_over = newly_failed_over(self.previous, self.table);
        for name in names {
            if !failed_over.contains(name) || !self.may_wait(name).await {
                return false;
            }
        }
        !names.is_empty()
    }
}

/// A failover held back: nothing is published. What was decided stands (the plan's status is
/// written without the moves given up), so their keys in transit go back now all the same
/// (`before_write`); the table that gives their ranges back follows once the instance serves
/// again.
async fn hold_back(
    current: &super::fetch::Current,
    instances: Vec<String>,
    before_write: Option<impl Future<Output = Result<(), Error>>>,
) -> Result<Published, Error> {
    if let Some(before_write) = before_write {
        before_write.await?;
    }
    Ok(Published {
        held_back: instances,
        ..Published::unchanged(current)
    })
}

/// Publishes `table` when its content differs from the previous one: as the next version,
/// after deleting stale copies on the instances about to serve ranges, followed by Events and
/// the freeing of copies no longer served. An unchanged table is published again only when
/// the version annotation and the table's own version disagree. The credentials Secret is
/// brought in step with `table` before anything is published. `before_write` runs right
/// before a new table is written, after every wait and purge (the keys in transit of the moves
/// given up go back to their sources then: `rebalance::GiveBack`), or when a failover is held
/// back; not when nothing new is published or a step before it fails. The instances a new
/// table leaves out are listed as leaving in the same write (`super::departures`); entries
/// `done` (instance, version) leave the list. The instances that `lost` their data are failed
/// over although they answer.
#[allow(clippy::too_many_arguments)]
pub async fn publish_routing(
    ctx: &Context,
    policy: &CachePolicy,
    namespace: &str,
    selected: &[Arc<RedisInstance>],
    current: &super::fetch::Current,
    done: &BTreeSet<(String, u64)>,
    lost: &BTreeSet<String>,
    mut table: RoutingTable,
    before_write: Option<impl Future<Output = Result<(), Error>>>,
) -> Result<Published, Error> {
    credentials::sync(ctx, policy, namespace, &table).await?;
    let previous = current.table.as_ref();
    let previous_version = current.version;
    let resource_version = current.resource_version.as_deref();
    let cm_name = config_map_name(policy);
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let names: BTreeSet<String> = selected.iter().map(|ri| ri.name_any()).collect();
    let mut leaving = current.departures.clone();
    for (name, version) in done {
        leaving.finished(name, *version);
    }
    let cm = RoutingConfigMap {
        api: &cm_api,
        policy,
        name: &cm_name,
        returning: current.unfreed.instances(),
    };
    // A new schema (`--routing-schema` changed, or the previous operator wrote another) is
    // published as a new version too, so that the ConfigMap moves to it at once.
    let mut changed = previous.is_none_or(|p| {
        p.content_hash() != table.content_hash() || p.schema_version != table.schema_version
    });
    // A failover notice whose table never went out fenced an instance at a version no table
    // has: the same table goes out again at that version, or every sidecar stays fenced off
    // the instance once it answers again.
    let mut at_least = previous_version + 1;
    if let Some(fenced) =
        fences::unpublished_notice(ctx, namespace, &table.policy, selected, previous_version).await
    {
        if !changed {
            info!(
                version = fenced,
                published = previous_version,
                "a failover notice's table never went out: publishing the table again at its version"
            );
            changed = true;
        }
        at_least = at_least.max(fenced);
    }
    if changed {
        table.version = at_least;
        // A failover of an instance that answers right now waits (it is back, or was never
        // gone for the sidecars); otherwise every other instance learns its fence first.
        let newly = newly_failed_over(previous, &table);
        let back = Returning {
            ctx,
            namespace,
            selected,
            previous,
            table: &table,
            lost,
        };
        if let Some(name) = back.first_answering(&newly).await {
            info!(instance = %name, "holding a failover back: the instance answers again");
            return hold_back(current, newly, before_write).await;
        }
        // An unreachable instance whose ranges go elsewhere without failover entries (a
        // draining instance's to their new owner, a dead move source's to its target) is
        // failed over all the same: a sidecar that missed this table must not use it when it
        // answers again. So is a failover target that lost its data, whose ranges leave it.
        let mut newly = newly;
        for name in handed_off_from_unusable(previous, &table, selected, lost) {
            if !newly.contains(&name) {
                newly.push(name);
            }
        }
        if !newly.is_empty() {
            let raise: Vec<(String, u64)> =
                newly.iter().map(|n| (n.clone(), table.version)).collect();
            let told = fences::notify(ctx, namespace, &table.policy, selected, &raise).await;
            info!(failed_over = ?newly, instances = told, version = table.version, wait = ?NOTICE_WAIT, "failover notice recorded; waiting for the sidecars' leases to run out");
            // A sidecar that has not heard the notice may still hand out replies of the failed
            // instance while its lease lasts: none may be acknowledged once other instances
            // serve the ranges.
            tokio::time::sleep(NOTICE_WAIT).await;
            // An instance back within the wait (a blip: a few seconds' pause, a network
            // hiccup) keeps its ranges and its data: no other instance has served them yet.
            // The notice fenced it at this table's version on the others, so the routing in
            // force goes out again at that version at once: sidecars use the instance again as
            // soon as they load it, not only once probes find it `Ready` and a table without
            // the failover is built (until then each reconcile holds the failover back again,
            // without a notice, while it answers). Only when every instance of the notice is
            // back so: that table lifts the notice's fence for all of them, and one that is
            // still down, or lost its data, must stay fenced off and fail over. And only when
            // the routing in force runs no move that this table lets go: a move given up for
            // its dead target stays given up (its keys in transit go back to the source, the
            // target's copies of the range are dropped), so the target must not serve it again.
            let let_go = previous.map_or_else(Vec::new, |p| migrations_let_go(p, &table));
            if !let_go.is_empty() {
                let moves: Vec<String> = let_go
                    .iter()
                    .map(|m| format!("{} {}-{} {} → {}", m.category, m.start, m.end, m.from, m.to))
                    .collect();
                info!(
                    ?moves,
                    "the failover goes on even if its instances answer again: the routing in force runs moves given up since"
                );
            } else if let Some(previous) = previous
                && back.all_answering(&newly).await
            {
                if let Some(before_write) = before_write {
                    before_write.await?;
                }
                let mut again = previous.clone();
                again.version = table.version;
                again.schema_version = table.schema_version;
                let lists = Lists {
                    unfreed: current.unfreed.clone(),
                    leaving: current.departures.clone(),
                };
                cm.write(resource_version, &again, &lists).await?;
                info!(instances = ?newly, version = again.version, "holding a failover back: the instance answered again within the notice's wait; the routing in force is published again at the notice's version, and its data stays");
                notice_withdrawn(ctx, policy, &newly, again.version).await;
                // Not `now`: no plan's transition is carried out by this table.
                return Ok(Published {
                    table: Some(again),
                    held_back: newly,
                    ..Published::unchanged(current)
                });
            }
        }
        prepare_targets(ctx, namespace, selected, previous, &table).await?;
        // The copies of what `previous` routed to an instance and `table` does not are
        // recorded in the same write as the table: a restart between the two forgets nothing.
        let mut unfreed = current.unfreed.after(previous, &table);
        unfreed.retain_instances(&names);
        // So are the instances it leaves out: a restart between the two forgets none.
        let leaving = leaving.after(previous, &names, &table, Timestamp::now());
        if let Some(before_write) = before_write {
            before_write.await?;
        }
        let lists = Lists { unfreed, leaving };
        let written = cm.write(resource_version, &table, &lists).await?;
        info!(version = table.version, configmap = %cm_name, "published routing table");
        publish_events(ctx, policy, previous, &table).await;
        let lists = free_copies(ctx, namespace, selected, written, lists).await;
        return Ok(Published {
            table: Some(table),
            now: true,
            held_back: Vec::new(),
            copies_to_free: lists.unfreed.instances(),
            departures: lists.leaving,
        });
    }
    let mut unfreed = current.unfreed.clone();
    unfreed.retain_instances(&names);
    if let Some(previous) = previous {
        unfreed.without_held(previous);
        leaving.retain_leaving(previous);
    }
    let lists = Lists { unfreed, leaving };
    if previous_version > 0 && previous.is_some_and(|p| p.version != previous_version) {
        // Keep the annotation and the table's own version in step.
        table.version = previous_version;
        let written = cm.write(resource_version, &table, &lists).await?;
        let lists = free_copies(ctx, namespace, selected, written, lists).await;
        return Ok(Published {
            table: Some(table),
            now: false,
            held_back: Vec::new(),
            copies_to_free: lists.unfreed.instances(),
            departures: lists.leaving,
        });
    }
    let lists = match previous {
        Some(previous) if !current.unfreed.is_empty() || lists.leaving != current.departures => {
            let written = Written {
                cm: &cm,
                resource_version: current.resource_version.clone(),
                table: previous,
                lists: Lists {
                    unfreed: current.unfreed.clone(),
                    leaving: current.departures.clone(),
                },
            };
            free_copies(ctx, namespace, selected, written, lists).await
        }
        _ => lists,
    };
    Ok(Published {
        table: previous.cloned(),
        now: false,
        held_back: Vec::new(),
        copies_to_free: lists.unfreed.instances(),
        departures: lists.leaving,
    })
}

/// What the routing ConfigMap lists beside the table: the copies to free
/// (`super::unfreed`) and the instances leaving the policy (`super::departures`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lists {
    unfreed: Unfreed,
    leaving: Departures,
}

/// The policy's routing ConfigMap, for the writes of one reconcile.
struct RoutingConfigMap<'a> {
    api: &'a Api<ConfigMap>,
    policy: &'a CachePolicy,
    name: &'a str,
    /// Instances it listed copies to free of before this reconcile: they were unreachable
    /// when their ranges went elsewhere (or their copies could not be freed then), so
    /// sidecars on older tables may still hold connections to them.
    returning: BTreeSet<String>,
}

impl RoutingConfigMap<'_> {
    /// Writes `table` with its lists, on condition of `resource_version`.
    async fn write<'b>(
        &'b self,
        resource_version: Option<&str>,
        table: &'b RoutingTable,
        lists: &Lists,
    ) -> Result<Written<'b>, Error> {
        let written = apply_config_map(
            self.api,
            self.policy,
            self.name,
            resource_version,
            table,
            lists,
        )
        .await?;
        Ok(Written {
            cm: self,
            resource_version: written,
            table,
            lists: lists.clone(),
        })
    }
}

/// The routing ConfigMap as last written (or read): what writing its lists again needs.
struct Written<'a> {
    cm: &'a RoutingConfigMap<'a>,
    resource_version: Option<String>,
    table: &'a RoutingTable,
    /// What it lists.
    lists: Lists,
}

/// Applies the routing ConfigMap (server-side apply, owned by the policy), the table in its
/// `schema_version` ([`contents`]), on the condition that it is still at `resource_version`
/// when one is given.
async fn apply_config_map(
    api: &Api<ConfigMap>,
    policy: &CachePolicy,
    name: &str,
    resource_version: Option<&str>,
    table: &RoutingTable,
    lists: &Lists,
) -> Result<Option<String>, Error> {
    let (data, binary_data) = contents(table, table.schema_version);
    let mut annotations: BTreeMap<String, String> =
        [(VERSION_ANNOTATION.to_owned(), table.version.to_string())].into();
    if let Some(list) = lists.unfreed.render() {
        annotations.insert(UNFREED_ANNOTATION.to_owned(), list);
    }
    if let Some(list) = lists.leaving.render() {
        annotations.insert(DEPARTURES_ANNOTATION.to_owned(), list);
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: policy.namespace(),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "redis-fleet".to_owned(),
                    ),
                    ("redisfleet.io/policy".to_owned(), policy.name_any()),
                ]
                .into(),
            ),
            annotations: Some(annotations),
            owner_references: policy.controller_owner_ref(&()).map(|o| vec![o]),
            resource_version: resource_version.map(str::to_owned),
            ..ObjectMeta::default()
        },
        data,
        binary_data,
        ..ConfigMap::default()
    };
    let mut body = serde_json::to_value(&cm).map_err(|e| Error::ConfigMap {
        name: name.to_owned(),
        source: kube::Error::SerdeError(e),
    })?;
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("ConfigMap");
    let applied = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| Error::ConfigMap {
            name: name.to_owned(),
            source,
        })?;
    Ok(applied.resource_version())
}

/// Deletes, on every reachable instance, the keys of the ranges it is about to serve but did
/// not serve before: leftovers from an earlier failover or ownership must not be read.
async fn prepare_targets(
    ctx: &Context,
    namespace: &str,
    selected: &[Arc<RedisInstance>],
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
) -> Result<(), Error> {
    let fresh = build::stale_before_publishing(previous, next);
    if fresh.is_empty() || previous.is_none() {
        // The very first table: nothing routed anywhere before, nothing can be stale.
        return Ok(());
    }
    let resolver = Resolver::new(next.clone()).map_err(|e| Error::Purge {
        instance: String::new(),
        message: e.to_string(),
    })?;
    let purges = fresh.into_iter().filter_map(|(instance, ranges)| {
        let ri = selected.iter().find(|ri| ri.name_any() == instance)?;
        let resolver = &resolver;
        Some(async move {
            let deleted = purge(ctx, namespace, ri, resolver, &ranges)
                .await
                .map_err(|message| Error::Purge {
                    instance: instance.clone(),
                    message,
                })?;
            if deleted > 0 {
                info!(%instance, deleted, "removed stale copies before routing ranges to the instance");
            }
            Ok::<(), Error>(())
        })
    });
    futures::stream::iter(purges)
        .buffer_unordered(PURGES_AT_ONCE)
        .try_collect::<()>()
        .await
}

/// Deletes the copies to free (`super::unfreed`) on every instance that serves traffic, and
/// writes the lists that are left back to the ConfigMap when they differ from what it lists
/// (`lists.leaving` without the departures done). Returns what is left (what the ConfigMap
/// lists when that write fails: deleting a copy twice is harmless, forgetting one is not).
async fn free_copies(
    ctx: &Context,
    namespace: &str,
    selected: &[Arc<RedisInstance>],
    written: Written<'_>,
    mut lists: Lists,
) -> Lists {
    let unfreed = &mut lists.unfreed;
    if !unfreed.is_empty()
        && let Ok(resolver) = Resolver::new(written.table.clone())
    {
        let frees = unfreed.instances().into_iter().filter_map(|instance| {
            let ri = selected.iter().find(|ri| ri.name_any() == instance)?;
            let phase = ri.status.as_ref().and_then(|s| s.phase);
            if !matches!(phase, Some(p) if p.serves_traffic()) {
                return None;
            }
            let ranges = unfreed.ranges_of(&instance);
            let (written, resolver) = (&written, &resolver);
            Some(async move {
                free_on(ctx, namespace, ri, written, resolver, &instance, &ranges)
                    .await
                    .then_some(instance)
            })
        });
        let freed: Vec<String> = futures::stream::iter(frees)
            .buffer_unordered(PURGES_AT_ONCE)
            .filter_map(std::future::ready)
            .collect()
            .await;
        for instance in &freed {
            unfreed.freed(instance);
        }
    }
    if lists == written.lists {
        return lists;
    }
    match apply_config_map(
        written.cm.api,
        written.cm.policy,
        written.cm.name,
        written.resource_version.as_deref(),
        written.table,
        &lists,
    )
    .await
    {
        Ok(_) => lists,
        Err(e) => {
            warn!(error = %e, "could not record the copies left to free and the instances leaving");
            written.lists
        }
    }
}

/// Frees `instance`'s copies of `ranges` (fenced on itself first when it returns from an
/// outage or holds copies of a replicated category); whether they are gone.
async fn free_on(
    ctx: &Context,
    namespace: &str,
    ri: &RedisInstance,
    written: &Written<'_>,
    resolver: &Resolver,
    instance: &str,
    ranges: &[(String, SlotRange)],
) -> bool {
    // An instance back from an outage is fenced on itself first, its connections of older
    // tables closed: a sidecar that missed the handoff must not write there once its copies
    // are gone (its replies would be withheld, but the writes would run). So is one that
    // holds copies of a replicated category: a sidecar on a table that still named it the
    // range's replica would hand it results again after the purge, and the keys it left
    // there would be taken for data — by a drain that empties the instance into the owners,
    // over the owner's newer values (chaos seed 9).
    let replicated = ranges.iter().any(|(category, _)| {
        written
            .table
            .category(category)
            .is_some_and(|c| c.replication.is_some())
    });
    if (replicated || written.cm.returning.contains(instance))
        && let Err(e) = fences::fence_on_itself(
            ctx,
            namespace,
            &written.table.policy,
            &fences::Place::of(ri, namespace),
            written.table.version,
        )
        .await
    {
        warn!(%instance, error = %e, "could not fence an instance before freeing its copies; they are freed at the next reconcile");
        return false;
    }
    match purge(ctx, namespace, ri, resolver, ranges).await {
        Ok(n) => {
            if n > 0 {
                info!(%instance, deleted = n, "freed copies of ranges the instance no longer serves");
            }
            true
        }
        Err(e) => {
            warn!(%instance, error = %e, "could not free copies of ranges the instance no longer serves; retrying at the next reconcile");
            false
        }
    }
}

/// Deletes the keys of `ranges` (by category) on one instance.
async fn purge(
    ctx: &Context,
    namespace: &str,
    ri: &RedisInstance,
    resolver: &Resolver,
    ranges: &[(String, SlotRange)],
) -> Result<u64, String> {
    let target = ctx
        .secrets
        .target_of(ri, namespace)
        .await
        .map_err(|e| e.to_string())?;
    let timeout = ri.spec.health.timeout.get().max(Duration::from_secs(1));
    let instance = ObjectRef::from_obj(ri);
    let mut conn = ctx
        .connections
        .connection(&instance, &target, timeout)
        .await?;
    let mut by_category: BTreeMap<&str, Vec<SlotRange>> = BTreeMap::new();
    for (cat, r) in ranges {
        by_category.entry(cat.as_str()).or_default().push(*r);
    }
    let mut deleted = 0;
    for (cat, rs) in by_category {
        let Some(id) = resolver.categories().iter().position(|c| c.name == cat) else {
            continue;
        };
        let category = id as u16;
        let ranges_and_transit = async {
            let keys = delete_ranges(&mut conn, resolver, category, &rs).await?;
            let tombs = delete_tombstones(&mut conn, resolver, category, &rs).await?;
            Ok::<u64, redis::RedisError>(keys + tombs)
        };
        deleted += ranges_and_transit.await.map_err(|e| {
            ctx.connections.drop_connection(&instance);
            redact(&e.to_string(), &target.credentials)
        })?;
    }
    Ok(deleted)
}

/// Deletes the tombstones of keys of `category` in `ranges` (values a move had in transit
/// there): a stale copy's tombstone must not reach a target with a later move.
async fn delete_tombstones(
    conn: &mut (impl ConnectionLike + Send),
    resolver: &Resolver,
    category: u16,
    ranges: &[SlotRange],
) -> redis::RedisResult<u64> {
    let pattern = prefix_pattern(names::TOMB_PREFIX);
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, batch) =
            crate::redis::keys::scan_page(conn, cursor, &pattern, crate::redis::keys::SCAN_COUNT)
                .await?;
        let stale: Vec<&Vec<u8>> = batch
            .iter()
            .filter(|tomb| {
                names::key_of_tomb(tomb)
                    .is_some_and(|key| in_ranges(resolver, category, ranges, key))
            })
            .collect();
        if !stale.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&stale)
                .query_async::<u64>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// The Event and count of a failover notice withdrawn: every instance it named (`instances`)
/// answered again within its wait, and the routing in force went out again at `version`.
async fn notice_withdrawn(ctx: &Context, policy: &CachePolicy, instances: &[String], version: u64) {
    ctx.metrics.failover_notice_withdrawn(&PolicyLabels {
        namespace: policy.namespace().unwrap_or_default(),
        policy: policy.name_any(),
    });
    let event = Event {
        type_: EventType::Normal,
        reason: "FailoverWithdrawn".to_owned(),
        note: Some(withdrawal_note(instances, version)),
        action: "Failover".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(error = %e, "recording an event failed");
    }
}

/// The note of a `FailoverWithdrawn` Event (the chaos test reads it back).
pub fn withdrawal_note(instances: &[String], version: u64) -> String {
    format!(
        "{} answered again within the failover notice's wait: not failed over, it keeps its ranges and data (the routing in force is published again at version {version})",
        instances.join(", ")
    )
}

/// Events for a newly published table: what changed, and failovers starting or ending.
async fn publish_events(
    ctx: &Context,
    policy: &CachePolicy,
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
) {
    let reference = policy.object_ref(&());
    let mut events = vec![Event {
        type_: EventType::Normal,
        reason: "RoutingPublished".to_owned(),
        note: Some(describe_change(previous, next)),
        action: "Publish".to_owned(),
        secondary: None,
    }];
    let pairs = |t: Option<&RoutingTable>| -> BTreeMap<(String, String), Vec<String>> {
        let mut m: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for f in t
            .map(|t| t.failover.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|f| !f.handover)
        {
            let cats = m.entry((f.from.clone(), f.to.clone())).or_default();
            if !cats.contains(&f.category) {
                cats.push(f.category.clone());
            }
        }
        m
    };
    let (before, after) = (pairs(previous), pairs(Some(next)));
    for ((from, to), cats) in &after {
        if !before.contains_key(&(from.clone(), to.clone())) {
            events.push(Event {
                type_: EventType::Warning,
                reason: "FailoverStarted".to_owned(),
                note: Some(format!(
                    "{from} is unreachable: {} now served by {to}",
                    cats.join(", ")
                )),
                action: "Failover".to_owned(),
                secondary: None,
            });
        }
    }
    // The entries ended by swapping roles, with the range's replica after the swap (its
    // server, or the outgoing replica that stayed on).
    let swapped: Vec<(String, String, String)> = previous
        .map(|p| build::replicas::swapped_entries(p, next))
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let replica = build::replicas::replicas_of(next, &f.category)
                .get(usize::from(f.start))
                .and_then(|(r, _)| *r)
                .unwrap_or_default()
                .to_owned();
            (f.from, f.to, replica)
        })
        .collect();
    for ((from, to), cats) in &before {
        if !after.contains_key(&(from.clone(), to.clone())) {
            let roles = match swapped.iter().find(|(f, t, _)| f == from && t == to) {
                Some((.., replica)) => format!("; roles swapped, {replica} is the replica"),
                None => String::new(),
            };
            events.push(Event {
                type_: EventType::Normal,
                reason: "FailoverEnded".to_owned(),
                note: Some(format!(
                    "{from} serves {} again (was {to}){roles}",
                    cats.join(", ")
                )),
                action: "Failback".to_owned(),
                secondary: None,
            });
        }
    }
    events.extend(handover_events(previous, next, &swapped));
    for event in events {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "recording an event failed");
        }
    }
}

/// The Events of handovers (`build::handovers`) that `next` starts or ends; `swapped` are the
/// (owner, server, replica after the swap) of the entries it ends by swapping roles.
fn handover_events(
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
    swapped: &[(String, String, String)],
) -> Vec<Event> {
    let handovers = |t: Option<&RoutingTable>| -> Vec<Failover> {
        t.map(|t| t.failover.iter().filter(|f| f.handover).cloned().collect())
            .unwrap_or_default()
    };
    let (before, after) = (handovers(previous), handovers(Some(next)));
    let event = |reason: &str, note: String| Event {
        type_: EventType::Normal,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Rebalance".to_owned(),
        secondary: None,
    };
    let mut out = Vec::new();
    for f in after.iter().filter(|f| !before.contains(f)) {
        out.push(event(
            "HandoverStarted",
            format!(
                "{} {}-{} moves from {} to {} by handing over: {} is seeded as a third copy while {} serves, then the two swap roles; the range keeps its replica throughout",
                f.category, f.start, f.end, f.to, f.from, f.from, f.to
            ),
        ));
    }
    for f in before.iter().filter(|f| !after.contains(f)) {
        let note = if let Some((.., replica)) = swapped
            .iter()
            .find(|(from, to, _)| *from == f.from && *to == f.to)
        {
            format!(
                "{} serves {} {}-{} (was {}); {replica} is its replica",
                f.from, f.category, f.start, f.end, f.to
            )
        } else {
            format!(
                "the handover of {} {}-{} from {} to {} ended without a swap (an instance failed or left); the failover rules serve the range",
                f.category, f.start, f.end, f.to, f.from
            )
        };
        out.push(event("HandoverEnded", note));
    }
    out
}

/// A one-line summary of what changed between two tables.
pub fn describe_change(previous: Option<&RoutingTable>, next: &RoutingTable) -> String {
    let Some(prev) = previous else {
        return format!(
            "version {}: {} categories on {} instances",
            next.version,
            next.categories.len(),
            next.instances.len()
        );
    };
    let mut parts = Vec::new();
    let mut moved: BTreeMap<(String, String), u32> = BTreeMap::new();
    for c in &next.categories {
        if let Some(p) = prev.category(&c.name) {
            for (a, b) in p.owners().iter().zip(c.owners()) {
                if *a != b {
                    *moved.entry(((*a).to_owned(), b.to_owned())).or_default() += 1;
                }
            }
        }
    }
    for ((from, to), n) in moved {
        parts.push(format!("{n} slots from {from} to {to}"));
    }
    if next.failover != prev.failover {
        parts.push(format!("{} failover ranges", next.failover.len()));
    }
    let spec_changed = next
        .categories
        .iter()
        .map(|c| (&c.name, &c.prefixes, c.ttl))
        .ne(prev
            .categories
            .iter()
            .map(|c| (&c.name, &c.prefixes, c.ttl)));
    if spec_changed {
        parts.push("categories or TTL rules changed".to_owned());
    }
    if next.instances != prev.instances {
        parts.push("instance endpoints changed".to_owned());
    }
    if next.schema_version != prev.schema_version {
        parts.push(format!(
            "schema {} → {}",
            prev.schema_version, next.schema_version
        ));
    }
    if parts.is_empty() && next.content_hash() == prev.content_hash() {
        parts.push(
            "the same table again, at the version a failover notice fenced an instance at"
                .to_owned(),
        );
    }
    if parts.is_empty() {
        parts.push("content changed".to_owned());
    }
    format!("version {}: {}", next.version, parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::Failover;

    #[test]
    fn a_failover_target_that_lost_its_data_is_failed_over_when_its_ranges_leave_it() {
        // auth 0–8191 of the primary served by the secondary; then the entry ends (the
        // secondary lost its data: the range goes back to its owner, who was its replica).
        let next = crate::routing::table::tests::two_instance_table();
        let mut previous = next.clone();
        previous.failover.push(Failover {
            category: "auth".into(),
            start: 0,
            end: 8191,
            from: "primary".into(),
            to: "secondary".into(),
            handover: false,
        });
        let lost = BTreeSet::from(["secondary".to_owned()]);
        assert_eq!(
            handed_off_from_unusable(Some(&previous), &next, &[], &lost),
            ["secondary"]
        );
        // Answering with its data, it is not: the ranges leave it by the usual rules.
        assert!(handed_off_from_unusable(Some(&previous), &next, &[], &BTreeSet::new()).is_empty());
        // Nor when it keeps what it serves.
        assert!(handed_off_from_unusable(Some(&previous), &previous, &[], &lost).is_empty());
    }

    #[test]
    fn a_move_the_next_table_no_longer_runs_is_let_go_whatever_its_epoch() {
        let previous = {
            let mut t = crate::routing::table::tests::two_instance_table();
            t.migrating.push(Migration {
                category: "auth".into(),
                start: 0,
                end: 4095,
                from: "primary".into(),
                to: "secondary".into(),
                epoch: 7,
                target_serves: None,
            });
            t
        };
        // Given up (its target stopped): the next table no longer runs it.
        let given_up = crate::routing::table::tests::two_instance_table();
        let let_go = migrations_let_go(&previous, &given_up);
        assert_eq!(let_go.len(), 1);
        assert_eq!((let_go[0].start, let_go[0].to.as_str()), (0, "secondary"));
        // Run on (the next table only adds a failover): nothing is let go, at a new epoch too.
        let mut runs_on = previous.clone();
        runs_on.migrating[0].epoch = 9;
        assert!(migrations_let_go(&previous, &runs_on).is_empty());
        // Another range of the same move is another migration.
        let mut narrower = previous.clone();
        narrower.migrating[0].end = 2047;
        assert_eq!(migrations_let_go(&previous, &narrower).len(), 1);
    }

    #[test]
    fn a_handover_fails_nothing_over_and_neither_does_its_server_dying() {
        // auth 0–8191 (the primary's) is handed over to a third instance: the table names the
        // tertiary its owner, the primary serving it.
        let before = crate::routing::table::tests::two_instance_table();
        let mut handed = before.clone();
        handed
            .instances
            .insert("tertiary".into(), handed.instances["secondary"].clone());
        let auth = handed
            .categories
            .iter_mut()
            .find(|c| c.name == "auth")
            .unwrap();
        assert_eq!(auth.slots[0].instance, "primary", "the fixture changed");
        assert_eq!(
            auth.slots[0].range,
            SlotRange::new(0, 8191),
            "the fixture changed"
        );
        auth.slots[0].instance = "tertiary".into();
        let entry = |to: &str, handover: bool| Failover {
            category: "auth".into(),
            start: 0,
            end: 8191,
            from: "tertiary".into(),
            to: to.into(),
            handover,
        };
        handed.failover.push(entry("primary", true));
        // No failover notice for the new owner, whom no sidecar was ever routed the range to.
        assert!(newly_failed_over(Some(&before), &handed).is_empty());
        // The primary dies: the range goes to the secondary (its replica). That fails the
        // tertiary over no more than the handover did (a notice for it would hold the table
        // back: it answers).
        let mut after = handed.clone();
        after.failover = vec![entry("secondary", false)];
        assert!(newly_failed_over(Some(&handed), &after).is_empty());
        // The tertiary dies in turn while it serves the range: that is a failover of it.
        let mut served = handed.clone();
        served.failover.clear();
        let mut dead = served.clone();
        dead.failover = vec![entry("secondary", false)];
        assert_eq!(newly_failed_over(Some(&served), &dead), ["tertiary"]);
    }
}
