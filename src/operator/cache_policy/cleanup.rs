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
//!   loses that policy's keys once a table without it is published, in the background
//!   ([`Departures`]): tried again every [`CLEANUP_RETRY`] while it does not answer, for at
//!   most [`departures::GIVE_UP_AFTER`] — all but its fences: it is first fenced on itself at
//!   the published table's version (its own fence raised, the connections of older tables
//!   closed), and the fences hash stays. A sidecar still on an older table that names it (a
//!   straggler, which may route a range through the guard there) is refused by it from then
//!   on, reconnecting or not; without the fence and with its importing markers gone, the
//!   guard would run that sidecar's commands on an instance no table reads (chaos seed 1).
//!   An instance that cannot be fenced keeps every key (it answers nothing anyway) until it
//!   can; one selected again before that is left alone. What is left to do is listed in the
//!   routing ConfigMap with the table ([`departures`]), so an operator that restarts before
//!   the instance answers again takes it up where the last one stopped.
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

use super::departures::{self, Departure};
use super::fences::{self, Place};
use super::job::{COMPONENT_LABEL, JobSettings, POLICY_LABEL, POLICY_NAMESPACE_LABEL};
use super::{Error, PolicyContext, fetch};
use crate::operator::context::Context;
use crate::operator::metrics::PolicyLabels;

/// The finalizer on CachePolicies.
pub const FINALIZER: &str = "redisfleet.io/cleanup";

/// How long after its deletion a policy waits for unreachable instances before its finalizer
/// is removed anyway.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(120);

/// How often an unfinished cleanup is tried again.
pub const CLEANUP_RETRY: Duration = Duration::from_secs(10);

/// How long the keys of one instance may take to remove.
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(30);

/// SCAN page size.
const SCAN_COUNT: usize = 1000;

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

/// Where instance `name` of `namespace` is: as its RedisInstance says (from the cache, else as
/// the policy last selected it), else as `table` named it (a RedisInstance deleted before
/// this process saw it).
fn place(
    ctx: &PolicyContext,
    namespace: &str,
    policy: &str,
    name: &str,
    table: Option<&RoutingTable>,
) -> Option<Place> {
    ctx.shared
        .instances
        .get(&ObjectRef::new(name).within(namespace))
        .or_else(|| ctx.remembered(policy, name))
        .map(|ri| Place::of(&ri, namespace))
        .or_else(|| {
            let endpoint = table?.instances.get(name)?;
            Some(Place::named_by(name, endpoint))
        })
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

/// Removes `policy`'s keys from the instance at `place`; the error says why not (credentials
/// redacted).
async fn clean_instance(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    place: &Place,
    removal: Removal,
) -> Result<u64, String> {
    let attempt = async {
        let keep_fences = match removal {
            Removal::All => false,
            Removal::LeftAt(version) => {
                // Fenced before anything goes: the guard answers a sidecar of an older table
                // from this instance as soon as the importing markers are gone.
                fences::fence_on_itself(ctx, namespace, policy, place, version)
                    .await
                    .map_err(|e| format!("fencing it at v{version}: {e}"))?;
                true
            }
        };
        let mut conn = fences::connect_to(ctx, namespace, place).await?;
        remove_policy_keys(&mut conn, policy, keep_fences)
            .await
            .map_err(|e| e.to_string())
    };
    let result = match tokio::time::timeout(INSTANCE_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {INSTANCE_TIMEOUT:?}")),
    };
    result.inspect_err(|_| {
        ctx.connections.drop_connection(&place.reference(namespace));
    })
}

/// Instances that left a live policy, being fenced and cleaned in the background (by policy
/// key and instance name): a reconcile never waits for an instance that does not answer. The
/// list of what is left to do is the routing ConfigMap's ([`departures::Departures`]); this
/// runs it, and tells the reconcile which entries are done.
#[derive(Debug, Default, Clone)]
pub struct Departures {
    running: Arc<Mutex<HashMap<(String, String), Running>>>,
    /// Entries done (fenced and cleaned, or given up), by policy key.
    finished: Arc<Mutex<HashMap<String, Done>>>,
}

/// Departures done: (instance, the version it left at).
pub type Done = BTreeSet<(String, u64)>;

/// One instance's departure under way.
#[derive(Debug)]
struct Running {
    task: tokio::task::JoinHandle<()>,
    place: Place,
    version: u64,
}

impl Departures {
    /// Fences the instance `name` of policy `key` on itself at the version it left at, then
    /// removes the policy's other keys from it (waiting `timeout` for it, else
    /// [`Place::named_by`]'s); tried again every [`CLEANUP_RETRY`] while it fails, until the
    /// departure is given up ([`departures::Departure::given_up`]). Nothing new when that is
    /// under way already, or done.
    pub fn start(
        &self,
        ctx: Arc<Context>,
        namespace: &str,
        key: &str,
        name: &str,
        departure: &Departure,
        timeout: Option<Duration>,
    ) {
        let id = (key.to_owned(), name.to_owned());
        let version = departure.version;
        if self.is_finished(key, name, version) {
            return;
        }
        let mut running = self.lock_running();
        if running.get(&id).is_some_and(|r| r.version == version) {
            return;
        }
        if let Some(stale) = running.remove(&id) {
            stale.task.abort();
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        let this = self.clone();
        let mut place = Place::named_by(name, &departure.endpoint);
        if let Some(timeout) = timeout {
            place.timeout = timeout;
        }
        let departure = departure.clone();
        let task = {
            let place = place.clone();
            tokio::spawn(async move {
                let name = place.name.clone();
                let mut tries = 0u32;
                loop {
                    tries += 1;
                    let removal = Removal::LeftAt(version);
                    match clean_instance(&ctx, &namespace, &key, &place, removal).await {
                        Ok(removed) => {
                            info!(policy = %key, instance = %name, removed, version, tries, "fenced an instance that left the policy and removed the policy's other keys from it");
                            break;
                        }
                        Err(e) if !departure.given_up(Timestamp::now()) => {
                            warn!(policy = %key, instance = %name, error = %e, tries, "could not fence an instance that left the policy or remove the policy's keys from it; trying again in {CLEANUP_RETRY:?}");
                            tokio::time::sleep(CLEANUP_RETRY).await;
                        }
                        Err(e) => {
                            warn!(policy = %key, instance = %name, error = %e, tries, since = %departure.since, "could not fence an instance that left the policy for {:?} after it left; giving up, its keys stay", departures::GIVE_UP_AFTER);
                            let policy = key.rsplit('/').next().unwrap_or_default().to_owned();
                            ctx.metrics.departure_given_up(&PolicyLabels {
                                namespace: namespace.clone(),
                                policy,
                            });
                            break;
                        }
                    }
                }
                this.finish(&key, &name, version);
            })
        };
        running.insert(
            id,
            Running {
                task,
                place,
                version,
            },
        );
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_finished(&self) -> std::sync::MutexGuard<'_, HashMap<String, Done>> {
        self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_finished(&self, key: &str, name: &str, version: u64) -> bool {
        self.lock_finished()
            .get(key)
            .is_some_and(|f| f.contains(&(name.to_owned(), version)))
    }

    /// Records a departure as done (its task ends).
    fn finish(&self, key: &str, name: &str, version: u64) {
        self.lock_finished()
            .entry(key.to_owned())
            .or_default()
            .insert((name.to_owned(), version));
        let mut running = self.lock_running();
        let id = (key.to_owned(), name.to_owned());
        if running.get(&id).is_some_and(|r| r.version == version) {
            running.remove(&id);
        }
    }

    /// The departures of policy `key` that are done: (instance, version).
    pub fn finished(&self, key: &str) -> Done {
        self.lock_finished().get(key).cloned().unwrap_or_default()
    }

    /// How many of `list`'s instances policy `key` still waits for: neither done nor
    /// `selected` again.
    pub fn waiting(
        &self,
        key: &str,
        list: &departures::Departures,
        selected: &[Arc<RedisInstance>],
    ) -> usize {
        list.iter()
            .filter(|(name, d)| {
                !selected.iter().any(|ri| ri.name_any() == **name)
                    && !self.is_finished(key, name, d.version)
            })
            .count()
    }

    /// Forgets the finished departures of policy `key` that `list` no longer holds (the
    /// ConfigMap was written without them).
    pub fn settled(&self, key: &str, list: &departures::Departures) {
        let mut finished = self.lock_finished();
        if let Some(f) = finished.get_mut(key) {
            f.retain(|(name, version)| {
                list.iter().any(|(n, d)| n == name && d.version == *version)
            });
            if f.is_empty() {
                finished.remove(key);
            }
        }
    }

    /// Stops the work on policy `key`'s instances for which `stop` holds (selected again, or
    /// the policy deleted), and waits until it stopped: no command of it lands afterwards.
    /// Returns where those instances are.
    pub async fn stop(&self, key: &str, stop: impl Fn(&str) -> bool) -> Vec<Place> {
        let halted: Vec<Running> = {
            let mut running = self.lock_running();
            let ids: Vec<(String, String)> = running
                .keys()
                .filter(|(k, name)| k == key && stop(name))
                .cloned()
                .collect();
            ids.iter().filter_map(|id| running.remove(id)).collect()
        };
        let mut out = Vec::new();
        for r in halted {
            r.task.abort();
            let _ = r.task.await;
            out.push(r.place);
        }
        out
    }

    /// Forgets everything of deleted policy `key`.
    pub fn forget(&self, key: &str) {
        self.lock_finished().remove(key);
    }
}

/// Starts (or keeps going) the fencing and cleaning of the instances leaving policy `key`,
/// as the routing ConfigMap lists them, but for those `selected` again (left alone while they
/// are: an entry goes once a table names the instance again).
pub fn clean_departed(
    ctx: &PolicyContext,
    namespace: &str,
    key: &str,
    list: &departures::Departures,
    selected: &[Arc<RedisInstance>],
) {
    ctx.departures.settled(key, list);
    for (name, departure) in list.iter() {
        if selected.iter().any(|ri| ri.name_any() == *name) {
            continue;
        }
        // Waited for as long as its RedisInstance says, if this process knows it.
        let timeout = ctx
            .shared
            .instances
            .get(&ObjectRef::new(name).within(namespace))
            .or_else(|| ctx.remembered(key, name))
            .map(|ri| Place::of(&ri, namespace).timeout);
        ctx.departures
            .start(ctx.shared.clone(), namespace, key, name, departure, timeout);
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
    let (table, departing) = match fetch::read_published(&cm_api, &config_map_name(&policy)).await {
        Ok(current) => (current.table, current.departures),
        Err(e) => {
            warn!(policy = %key, error = %e, "cleanup: reading the last routing table failed");
            (None, departures::Departures::default())
        }
    };
    let selected: BTreeSet<String> = fetch::selected_instances(shared, &policy, &namespace)
        .iter()
        .map(|ri| ri.name_any())
        .chain(ctx.remembered_names(&key))
        .collect();
    let mut unknown = Vec::new();
    // Instances still leaving the policy are cleaned with the rest.
    let mut leaving: BTreeMap<String, Place> = departing
        .iter()
        .map(|(name, d)| (name.clone(), Place::named_by(name, &d.endpoint)))
        .collect();
    leaving.extend(
        ctx.departures
            .stop(&key, |_| true)
            .await
            .into_iter()
            .map(|place| (place.name.clone(), place)),
    );
    let names = to_clean(table.as_ref(), &selected)
        .into_iter()
        .chain(leaving.keys().cloned())
        .collect::<BTreeSet<String>>();
    for instance in names {
        let place = leaving
            .get(&instance)
            .cloned()
            .or_else(|| place(ctx, &namespace, &key, &instance, table.as_ref()));
        let Some(place) = place else {
            unknown.push(instance);
            continue;
        };
        match clean_instance(&ctx.shared, &namespace, &key, &place, Removal::All).await {
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
    ctx.departures.forget(&key);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::naming;

    fn table(names: &[&str]) -> RoutingTable {
        naming(1, names)
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
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
