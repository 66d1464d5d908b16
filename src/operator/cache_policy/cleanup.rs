//! Cleanup: what a policy leaves behind goes with it.
//!
//! - A deleted CachePolicy is held by the finalizer [`FINALIZER`] until its rebalance Jobs are
//!   deleted (a Job in another namespace than the policy cannot be owned by it, so garbage
//!   collection would never remove it) and its own `redisfleet:` keys — fences, heartbeats,
//!   the mover token, the urgent queue, importing markers, the Jobs' scan checkpoints
//!   ([`names::policy_keys`], [`names::policy_key_patterns`]) — are removed from every instance
//!   its last routing table names or it selects. Best effort with a bound: an unreachable
//!   instance is retried, and [`CLEANUP_DEADLINE`] after the deletion the finalizer goes
//!   anyway, with a Warning Event naming what was left. Deleting a policy never hangs.
//! - An instance that leaves a live policy (no longer selected, or its RedisInstance deleted)
//!   loses that policy's keys once a table without it is published ([`departed`], pure), in
//!   the background ([`Departures`]): tried again every [`CLEANUP_RETRY`] while it does not
//!   answer, for at most [`DEPARTED_RETRY_FOR`] — all but its fences: it is first fenced on itself at
//!   the published table's version (its own fence raised, the connections of older tables
//!   closed), and the fences hash stays. A sidecar still on an older table that names it (a
//!   straggler, which may route a range through the guard there) is refused by it from then
//!   on, reconnecting or not; without the fence and with its importing markers gone, the
//!   guard would run that sidecar's commands on an instance no table reads (chaos seed 1).
//!   An instance that cannot be fenced keeps every key (it answers nothing anyway) until it
//!   can; one selected again before that is left alone.
//!   A deleted policy's cleanup removes the fences too: no table of it is left.
//!
//! Application keys are never touched, nor another policy's: exact names, or SCAN MATCH on
//! patterns that end with `<policy>:`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use redis::aio::ConnectionLike;
use tracing::{info, warn};

use crate::api::cache_policy::{CachePolicy, config_map_name};
use crate::api::redis_instance::RedisInstance;
use crate::redis::keys::RESERVED_PREFIX;
use crate::redis::protocol::names;
use crate::routing::table::RoutingTable;

use super::job::{COMPONENT_LABEL, JobSettings, POLICY_LABEL, POLICY_NAMESPACE_LABEL};
use super::{Error, PolicyContext, fences, fetch};
use crate::operator::context::Context;

/// The finalizer on CachePolicies.
pub const FINALIZER: &str = "redisfleet.io/cleanup";

/// How long after its deletion a policy waits for unreachable instances before its finalizer
/// is removed anyway.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(120);

/// How often an unfinished cleanup is tried again.
pub const CLEANUP_RETRY: Duration = Duration::from_secs(10);

/// How long an instance that left a live policy is tried again while it does not answer.
pub const DEPARTED_RETRY_FOR: Duration = Duration::from_secs(3600);

/// How long the keys of one instance may take to remove.
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(30);

/// SCAN page size.
const SCAN_COUNT: usize = 1000;

/// Instances the previous table named that are neither selected nor in the table published
/// now: they left the policy.
pub fn departed(
    previous: &RoutingTable,
    selected: &BTreeSet<String>,
    published: &RoutingTable,
) -> Vec<String> {
    previous
        .instances
        .keys()
        .filter(|n| !selected.contains(*n) && !published.instances.contains_key(*n))
        .cloned()
        .collect()
}

/// Instances a deleted policy's keys are removed from: those its last table names and those
/// it selects (the ConfigMap may already be garbage-collected).
pub fn to_clean(table: Option<&RoutingTable>, selected: &BTreeSet<String>) -> BTreeSet<String> {
    table
        .into_iter()
        .flat_map(|t| t.instances.keys().cloned())
        .chain(selected.iter().cloned())
        .collect()
}

/// Whether the cleanup of a policy deleted at `deleted` should give up at `now`.
pub fn past_deadline(deleted: Option<Timestamp>, now: Timestamp) -> bool {
    deleted.is_some_and(|d| {
        now.duration_since(d)
            .try_into()
            .is_ok_and(|elapsed: Duration| elapsed >= CLEANUP_DEADLINE)
    })
}

/// The label selector of `namespace/name`'s rebalance Jobs.
pub fn jobs_selector(namespace: &str, name: &str) -> String {
    format!(
        "{}={},{POLICY_LABEL}={name},{POLICY_NAMESPACE_LABEL}={namespace}",
        COMPONENT_LABEL.0, COMPONENT_LABEL.1
    )
}

/// The fixed names of `policy`'s keys that a cleanup removes: all of them, or all but the
/// fences hash (`keep_fences`, an instance that left a live policy).
pub fn keys_to_remove(policy: &str, keep_fences: bool) -> Vec<String> {
    let fences = names::fences(policy);
    names::policy_keys(policy)
        .into_iter()
        .filter(|k| !keep_fences || *k != fences)
        .collect()
}

/// Removes `policy`'s own keys from one instance: UNLINK of the fixed names (the fences hash
/// too unless `keep_fences`), SCAN MATCH + UNLINK for the others. How many were removed.
pub async fn remove_policy_keys(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
    keep_fences: bool,
) -> redis::RedisResult<u64> {
    let mut removed: u64 = redis::cmd("UNLINK")
        .arg(keys_to_remove(policy, keep_fences))
        .query_async(conn)
        .await?;
    for pattern in names::policy_key_patterns(policy) {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(conn)
                .await?;
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| k.starts_with(RESERVED_PREFIX))
                .collect();
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
                removed += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}

/// The RedisInstance `name` of `namespace`: from the cache, else as the policy last selected
/// it (a deleted one).
fn instance(
    ctx: &PolicyContext,
    namespace: &str,
    policy: &str,
    name: &str,
) -> Option<Arc<RedisInstance>> {
    ctx.shared
        .instances
        .get(&ObjectRef::new(name).within(namespace))
        .or_else(|| ctx.remembered(policy, name))
}

/// What a cleanup removes from an instance.
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// Every key of the policy (a deleted policy: no table of it is left).
    All,
    /// An instance that left a live policy whose table `version` no longer names it: fenced
    /// on itself at that version first, then every key of the policy but the fences.
    LeftAt(u64),
}

/// Removes `policy`'s keys from instance `ri`; the error says why not (credentials redacted).
async fn clean_instance(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    ri: &RedisInstance,
    removal: Removal,
) -> Result<u64, String> {
    let attempt = async {
        let keep_fences = match removal {
            Removal::All => false,
            Removal::LeftAt(version) => {
                // Fenced before anything goes: the guard answers a sidecar of an older table
                // from this instance as soon as the importing markers are gone.
                fences::fence_returning(ctx, namespace, policy, ri, version)
                    .await
                    .map_err(|e| format!("fencing it at v{version}: {e}"))?;
                true
            }
        };
        let mut conn = fences::connect(ctx, namespace, ri).await?;
        remove_policy_keys(&mut conn, policy, keep_fences)
            .await
            .map_err(|e| e.to_string())
    };
    let result = match tokio::time::timeout(INSTANCE_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {INSTANCE_TIMEOUT:?}")),
    };
    result.inspect_err(|_| {
        ctx.connections.drop_connection(&ObjectRef::from_obj(ri));
    })
}

/// Instances that left a live policy, being fenced and cleaned in the background (by policy
/// key and instance name): a reconcile never waits for an instance that does not answer.
#[derive(Debug, Default, Clone)]
pub struct Departures(Arc<Mutex<HashMap<(String, String), Departure>>>);

/// One instance's departure under way.
#[derive(Debug)]
struct Departure {
    task: tokio::task::JoinHandle<()>,
    instance: Arc<RedisInstance>,
}

impl Departures {
    /// Fences instance `ri`, which left policy `key` when table `version` was published, on
    /// itself at that version, then removes the policy's other keys from it; tried again every
    /// [`CLEANUP_RETRY`] while it fails, for at most [`DEPARTED_RETRY_FOR`]. Nothing new when
    /// that is under way already.
    pub fn start(
        &self,
        ctx: Arc<Context>,
        namespace: &str,
        key: &str,
        ri: Arc<RedisInstance>,
        version: u64,
    ) {
        let id = (key.to_owned(), ri.name_any());
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(&id) {
            return;
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        let this = self.clone();
        let finished = id.clone();
        let instance = ri.clone();
        let task = tokio::spawn(async move {
            let name = ri.name_any();
            let give_up = tokio::time::Instant::now() + DEPARTED_RETRY_FOR;
            let mut tries = 0u32;
            loop {
                tries += 1;
                let removal = Removal::LeftAt(version);
                match clean_instance(&ctx, &namespace, &key, &ri, removal).await {
                    Ok(removed) => {
                        info!(policy = %key, instance = %name, removed, version, tries, "fenced an instance that left the policy and removed the policy's other keys from it");
                        break;
                    }
                    Err(e) if tokio::time::Instant::now() + CLEANUP_RETRY < give_up => {
                        warn!(policy = %key, instance = %name, error = %e, tries, "could not fence an instance that left the policy or remove the policy's keys from it; trying again in {CLEANUP_RETRY:?}");
                        tokio::time::sleep(CLEANUP_RETRY).await;
                    }
                    Err(e) => {
                        warn!(policy = %key, instance = %name, error = %e, tries, "could not fence an instance that left the policy for {DEPARTED_RETRY_FOR:?}; giving up, its keys stay");
                        break;
                    }
                }
            }
            this.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&finished);
        });
        running.insert(id, Departure { task, instance });
    }

    /// Stops the work on policy `key`'s instances for which `stop` holds (selected again, or
    /// the policy deleted), and waits until it stopped: no command of it lands afterwards.
    /// Returns those instances.
    pub async fn stop(&self, key: &str, stop: impl Fn(&str) -> bool) -> Vec<Arc<RedisInstance>> {
        let halted: Vec<Departure> = {
            let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<(String, String)> = running
                .keys()
                .filter(|(k, name)| k == key && stop(name))
                .cloned()
                .collect();
            ids.iter().filter_map(|id| running.remove(id)).collect()
        };
        let mut out = Vec::new();
        for d in halted {
            d.task.abort();
            let _ = d.task.await;
            out.push(d.instance);
        }
        out
    }
}

/// Starts the fencing and cleaning of the instances that left policy `key` ([`departed`]),
/// now that table `version` without them is published. A RedisInstance this process cannot
/// find any more (deleted before it was ever seen selected) is logged and left alone.
pub fn clean_departed(
    ctx: &PolicyContext,
    namespace: &str,
    key: &str,
    left: &[String],
    version: u64,
) {
    for name in left {
        match instance(ctx, namespace, key, name) {
            Some(ri) => {
                ctx.departures
                    .start(ctx.shared.clone(), namespace, key, ri, version);
            }
            None => {
                info!(instance = %name, "an instance left the policy; its RedisInstance is gone, its keys of the policy stay");
            }
        }
    }
}

/// Deletes the rebalance Jobs of policy `namespace/name` (their pods go with them).
async fn delete_jobs(
    ctx: &PolicyContext,
    settings: &JobSettings,
    namespace: &str,
    name: &str,
) -> Result<usize, kube::Error> {
    let job_namespace = settings.namespace.as_deref().unwrap_or(namespace);
    let api: Api<Job> = Api::namespaced(ctx.shared.client.clone(), job_namespace);
    let jobs = api
        .list_metadata(&ListParams::default().labels(&jobs_selector(namespace, name)))
        .await?;
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    let mut deleted = 0;
    for job in jobs.items {
        match api.delete(&job.name_any(), &params).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// The finalizer's cleanup of a deleted policy: `Ok` lets the finalizer go, an error keeps it
/// (retried after [`CLEANUP_RETRY`]).
pub async fn on_delete(policy: Arc<CachePolicy>, ctx: &PolicyContext) -> Result<Action, Error> {
    let shared = &ctx.shared;
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let name = policy.name_any();
    let key = format!("{namespace}/{name}");
    let mut left = Vec::new();

    // Jobs first: a running one could write its keys again.
    match delete_jobs(ctx, &ctx.jobs, &namespace, &name).await {
        Ok(n) if n > 0 => info!(policy = %key, jobs = n, "deleted the policy's rebalance Jobs"),
        Ok(_) => {}
        Err(e) => left.push(format!("rebalance Jobs ({e})")),
    }

    let cm_api = Api::namespaced(shared.client.clone(), &namespace);
    let table = match fetch::read_published(&cm_api, &config_map_name(&policy)).await {
        Ok(current) => current.table,
        Err(e) => {
            warn!(policy = %key, error = %e, "cleanup: reading the last routing table failed");
            None
        }
    };
    let selected: BTreeSet<String> = fetch::selected_instances(shared, &policy, &namespace)
        .iter()
        .map(|ri| ri.name_any())
        .chain(ctx.remembered_names(&key))
        .collect();
    let mut unknown = Vec::new();
    // Instances still leaving the policy are cleaned with the rest.
    let leaving: BTreeMap<String, Arc<RedisInstance>> = ctx
        .departures
        .stop(&key, |_| true)
        .await
        .into_iter()
        .map(|ri| (ri.name_any(), ri))
        .collect();
    let names = to_clean(table.as_ref(), &selected)
        .into_iter()
        .chain(leaving.keys().cloned())
        .collect::<BTreeSet<String>>();
    for instance in names {
        let ri = leaving
            .get(&instance)
            .cloned()
            .or_else(|| self::instance(ctx, &namespace, &key, &instance));
        let Some(ri) = ri else {
            unknown.push(instance);
            continue;
        };
        match clean_instance(&ctx.shared, &namespace, &key, &ri, Removal::All).await {
            Ok(removed) => {
                info!(policy = %key, %instance, removed, "removed the deleted policy's keys");
            }
            Err(e) => left.push(format!("keys on {instance} ({e})")),
        }
    }
    if !unknown.is_empty() {
        left.push(format!(
            "keys on {} (RedisInstance gone)",
            unknown.join(", ")
        ));
    }
    let retryable = left.len() > usize::from(!unknown.is_empty());
    let deleted = policy.metadata.deletion_timestamp.as_ref().map(|t| t.0);
    if retryable && !past_deadline(deleted, Timestamp::now()) {
        return Err(Error::Cleanup(left.join("; ")));
    }
    if !left.is_empty() {
        let note = format!(
            "finalizer {FINALIZER} removed; left behind: {}",
            left.join("; ")
        );
        warn!(policy = %key, left = %left.join("; "), "cleanup incomplete: removing the finalizer anyway");
        let event = Event {
            type_: EventType::Warning,
            reason: "CleanupIncomplete".to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Cleanup".to_owned(),
            secondary: None,
        };
        if let Err(e) = shared
            .recorder
            .publish(&event, &policy.object_ref(&()))
            .await
        {
            warn!(error = %e, "recording an event failed");
        }
    }
    ctx.forget(&key);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::InstanceEndpoint;

    fn table(names: &[&str]) -> RoutingTable {
        RoutingTable {
            schema_version: 1,
            version: 1,
            policy: "apps/shop".into(),
            instances: names
                .iter()
                .map(|n| {
                    let endpoint = InstanceEndpoint {
                        host: format!("{n}.apps"),
                        port: 6379,
                        tls: None,
                        username_secret: None,
                        password_secret: None,
                    };
                    ((*n).to_owned(), endpoint)
                })
                .collect(),
            categories: Vec::new(),
            migrating: Vec::new(),
            failover: Vec::new(),
            placement_bases: Vec::new(),
            strategy: None,
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn instances_that_left_are_those_neither_selected_nor_published() {
        let previous = table(&["a", "b", "c"]);
        // c deselected (or deleted) and no longer published: it left.
        assert_eq!(
            departed(&previous, &set(&["a", "b"]), &table(&["a", "b"])),
            ["c"]
        );
        // Still published (the new table could not drop it yet): it has not left.
        assert!(departed(&previous, &set(&["a", "b"]), &table(&["a", "b", "c"])).is_empty());
        // Selected again: not left. Nothing changed: nothing left.
        assert!(departed(&previous, &set(&["a", "b", "c"]), &table(&["a", "b"])).is_empty());
        assert!(departed(&previous, &set(&["a", "b", "c"]), &previous).is_empty());
    }

    #[test]
    fn an_instance_that_left_keeps_its_fences_and_a_deleted_policy_does_not() {
        let all = keys_to_remove("apps/shop", false);
        assert_eq!(all, names::policy_keys("apps/shop"));
        let left = keys_to_remove("apps/shop", true);
        assert!(!left.contains(&names::fences("apps/shop")), "{left:?}");
        assert_eq!(left.len(), all.len() - 1);
        assert!(left.contains(&names::mover("apps/shop")));
    }

    #[test]
    fn a_deleted_policy_is_cleaned_on_its_table_and_its_selection() {
        assert_eq!(
            to_clean(Some(&table(&["a", "b"])), &set(&["b", "c"])),
            set(&["a", "b", "c"])
        );
        assert_eq!(to_clean(None, &set(&["c"])), set(&["c"]));
    }

    #[test]
    fn the_cleanup_gives_up_after_its_deadline() {
        let deleted: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let soon: Timestamp = "2026-01-01T00:01:59Z".parse().unwrap();
        let late: Timestamp = "2026-01-01T00:02:00Z".parse().unwrap();
        assert!(!past_deadline(Some(deleted), soon));
        assert!(past_deadline(Some(deleted), late));
        assert!(!past_deadline(None, late));
    }

    #[test]
    fn the_jobs_selector_names_the_policy_and_its_namespace() {
        assert_eq!(
            jobs_selector("apps", "shop"),
            "app.kubernetes.io/component=rebalance,redisfleet.io/policy=shop,redisfleet.io/policy-namespace=apps"
        );
    }
}
