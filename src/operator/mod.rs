//! `redis-fleet operator`: the RedisInstance and CachePolicy controllers, the metrics and
//! health endpoint, leader election and graceful shutdown.
//!
//! One watch scope per `--namespace` (or one cluster-wide scope): each scope has its own
//! caches, controllers and [`context::Context`] of shared handles, while metrics and the
//! event reporter are shared by all scopes.
//!
//! - [`redis_instance`]: probes each instance and writes its status (managed ones: applies
//!   their StatefulSet first);
//! - [`cache_policy`]: computes, publishes and rebalances each policy's routing table;
//! - [`context`], [`secrets`], [`connections`], [`sampling`], [`metrics`], [`status_writes`]:
//!   what both use;
//! - [`crate::kube_client`]: the one API connection every reconcile and watch shares;
//! - [`leader`]: with `--leader-election` the scopes start only once this replica holds the
//!   Lease; a standby serves `/metrics`, `/healthz` and a passing `/readyz` meanwhile.

pub mod cache_policy;
pub mod command;
pub mod connections;
pub mod context;
pub mod leader;
pub mod metrics;
pub mod redis_instance;
pub mod sampling;
pub mod secrets;
pub mod status_writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::runtime::{Controller, WatchStreamExt, predicates};
use kube::{Client, Resource};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{CachePolicy, RedisInstance};
use crate::http;
use cache_policy::PolicyContext;
use context::Context;
use metrics::Metrics;
use redis_instance::InstanceContext;
use secrets::SecretReader;

/// RedisInstance reconciles (probes) in flight at once.
const INSTANCE_CONCURRENCY: u16 = 32;

/// How often the series of deleted instances and policies are looked for.
const JANITOR_INTERVAL: Duration = Duration::from_secs(5);

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespaces to watch; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Address of the metrics and health endpoint.
    pub metrics_addr: SocketAddr,
    /// Name reported on Events (`reportingController`).
    pub controller_name: String,
    /// Instance reported on Events (the pod name, when known); also the leader-election
    /// identity.
    pub instance_name: Option<String>,
    /// Leader election; `None`: this process always leads.
    pub leader_election: Option<leader::ElectionConfig>,
    /// How rebalance Jobs are made.
    pub jobs: cache_policy::job::JobSettings,
    /// How often an unchanged status is rewritten ([`status_writes`]).
    pub status_refresh: Duration,
    /// Schema of the routing tables published (see [`crate::routing::encoding`]).
    pub routing_schema: u32,
    /// How long a Secret's data is used before it is read again ([`secrets`]).
    pub secret_reread: Duration,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cluster configuration was found.
    #[error("connecting to Kubernetes: {0}")]
    Client(#[source] kube::Error),
    /// The metrics address could not be bound.
    #[error("serving metrics on {addr}: {source}")]
    Metrics {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The leader-election settings are unusable.
    #[error("leader election: {0}")]
    LeaderElection(String),
    /// This replica led and lost the Lease: it must stop writing at once.
    #[error("lost the leader Lease ({0}): exiting so that this pod restarts as a standby")]
    LeadershipLost(String),
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), Error> {
    // One HTTP/2 connection for everything the process asks of the API server.
    let client = crate::kube_client::infer().await.map_err(Error::Client)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let leader_gauge = leader::register_gauge(&mut registry);
    let probes = http::Probes::new(registry);
    let (addr, _server) = http::serve(config.metrics_addr, probes.clone())
        .await
        .map_err(|source| Error::Metrics {
            addr: config.metrics_addr,
            source,
        })?;
    info!(%addr, "serving /metrics, /healthz and /readyz");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        info!("shutdown requested: finishing in-flight reconciles");
        let _ = stop_tx.send(true);
    });

    // With leader election, nothing below runs (and nothing is written) before this replica
    // holds the Lease.
    let mut election = match &config.leader_election {
        None => {
            leader_gauge.set(1);
            None
        }
        Some(le) => {
            let mut election =
                leader::Election::new(le, config.instance_name.as_deref(), leader_gauge).await?;
            let leads = tokio::select! {
                () = election.acquire(&probes) => true,
                () = stopped(stop_rx.clone()) => false,
            };
            if !leads {
                election.release().await;
                info!("stopped (standby)");
                return Ok(());
            }
            Some(election)
        }
    };

    let reporter = Reporter {
        controller: config.controller_name.clone(),
        instance: config.instance_name.clone(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let mut tasks = Vec::new();
    for scope in scopes {
        info!(namespace = scope.as_deref().unwrap_or("<all>"), "watching");
        tasks.push(run_scope(
            client.clone(),
            scope,
            metrics.clone(),
            recorder.clone(),
            &config,
            stop_rx.clone(),
        ));
    }
    probes.set_ready(true);
    let controllers = futures::future::join_all(tasks);
    match &mut election {
        None => {
            controllers.await;
        }
        Some(election) => {
            let lost = tokio::select! {
                _ = controllers => None,
                why = election.hold() => Some(why),
            };
            if let Some(why) = lost {
                // Dropping the controllers cancels what they had in flight; the caller exits.
                tracing::error!(reason = %why, "lost the leader Lease: stopping at once");
                return Err(Error::LeadershipLost(why));
            }
            // Stopped by a signal: the controllers are done, so let a standby take over now.
            election.release().await;
        }
    }
    info!("stopped");
    Ok(())
}

fn api<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Whether the store has listed its objects once.
fn ready<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// Resolves when `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn run_scope(
    client: Client,
    scope: Option<String>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    config: &Config,
    stop: watch::Receiver<bool>,
) {
    let ns = scope.as_deref();
    let jobs = config.jobs.clone();
    let wc = watcher::Config::default();

    // The CachePolicy controller: its own cache of policies (also used for the instances'
    // capacity thresholds) and a cache of instances fed by the same watch that triggers it, so
    // a reconcile never sees an instance older than the change that woke it. Its watch wakes
    // it on what it acts on ([`cache_policy::fetch::own_trigger`]), not on its own status
    // writes; the store behind it sees every change.
    // The copy's figures, which wake no reconcile, go to the metrics from the watch itself.
    let (policy_reader, policy_writer) = reflector::store::<CachePolicy>();
    let figures = metrics.clone();
    let policy_changes = cached_watch(api::<CachePolicy>(&client, ns), wc.clone(), policy_writer)
        .applied_objects()
        .inspect(move |changed| {
            if let Ok(policy) = changed {
                figures.policy_watched(policy);
            }
        })
        .predicate_filter(cache_policy::fetch::own_trigger, Default::default());
    let policy_controller = Controller::for_stream(policy_changes, policy_reader.clone());
    let (all_instances, all_instances_writer) = reflector::store::<RedisInstance>();
    let instance_changes = relevant_to_policies(
        cached_watch(
            api::<RedisInstance>(&client, ns),
            wc.clone(),
            all_instances_writer,
        ),
        policy_reader.clone(),
    );

    // Secrets are read by name and re-read on a timer ([`secrets`]), never listed or watched:
    // no Secret change wakes a reconcile; the instances' probe requeues pick rotations up.
    let shared = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        recorder,
        SecretReader::new(client.clone(), config.secret_reread),
        policy_reader.clone(),
        all_instances.clone(),
    ));

    let owned_wc = watcher::Config::default().labels("app.kubernetes.io/managed-by=redis-fleet");
    let trigger_policies = policy_reader.clone();
    // Rebalance Jobs live in the policy's namespace or in one Jobs namespace (chart mode);
    // their labels name the policy, so a Job that fails or completes wakes it at once.
    let jobs_scope = jobs.namespace.clone().or(scope.clone());
    let jobs_wc = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by=redis-fleet,{}={}",
        cache_policy::job::COMPONENT_LABEL.0,
        cache_policy::job::COMPONENT_LABEL.1
    ));
    let policies = policy_controller
        .owns(api::<ConfigMap>(&client, ns), owned_wc.clone())
        .watches(api::<Job>(&client, jobs_scope.as_deref()), jobs_wc, |job| {
            cache_policy::job::policy_of(&job)
        })
        .watches_stream(instance_changes, move |ri| {
            cache_policy::fetch::policies_selecting(&trigger_policies, &ri)
        })
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(
            cache_policy::reconcile,
            cache_policy::error_policy,
            Arc::new(PolicyContext::new(
                shared.clone(),
                jobs,
                config.status_refresh,
                config.routing_schema,
            )),
        )
        .for_each(log_failures(cache_policy::CONTROLLER));

    // The RedisInstance controller reconciles on spec changes only: its own status writes
    // must not trigger extra probes (probes are paced by requeues).
    let (instance_reader, instance_writer) = reflector::store::<RedisInstance>();
    let instances = cached_watch(
        api::<RedisInstance>(&client, ns),
        wc.clone(),
        instance_writer,
    )
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let instance_ctx = Arc::new(InstanceContext::new(shared.clone(), config.status_refresh));
    // Probes in flight at once: each takes a round trip (or its timeout, when the instance is
    // down); bounding them keeps memory and API bursts flat when 1 000 instances start.
    let instance_controller = Controller::for_stream(instances, instance_reader.clone())
        .with_config(controller::Config::default().concurrency(INSTANCE_CONCURRENCY))
        .owns(api::<StatefulSet>(&client, ns), owned_wc)
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(
            redis_instance::reconcile,
            redis_instance::error_policy,
            instance_ctx.clone(),
        )
        .for_each(log_failures(redis_instance::CONTROLLER));

    // Forget probe state and metric series of deleted instances and policies: a series left
    // at its last value would keep alerts on it firing. Cheap (a store lookup per object), so
    // it runs often enough that a deleted object's series go within seconds. A store that has
    // not listed its objects yet (e.g. its first watch was refused while the apiserver's
    // storage initialised) says nothing about what is deleted: its objects wait for it.
    // The metrics are shared by every scope: each janitor looks at its own namespace only.
    let janitor_scope = scope.clone();
    let janitor = async move {
        loop {
            tokio::time::sleep(JANITOR_INTERVAL).await;
            let in_scope =
                |namespace: &str| janitor_scope.as_deref().is_none_or(|ns| ns == namespace);
            if ready(&shared.instances) {
                instance_ctx.forget_deleted_instances();
                // By the metrics' own list, not the probe states: a probe under way when its
                // state was dropped may have made the series again.
                for labels in shared.metrics.instances() {
                    if !in_scope(&labels.namespace) {
                        continue;
                    }
                    let instance = ObjectRef::<RedisInstance>::new(&labels.redis_instance)
                        .within(&labels.namespace);
                    if shared.instances.get(&instance).is_none() {
                        shared.metrics.forget_instance(&labels);
                    }
                }
            }
            if ready(&shared.policies) {
                for labels in shared
                    .metrics
                    .policies()
                    .into_iter()
                    .filter(|l| in_scope(&l.namespace))
                {
                    let policy =
                        ObjectRef::<CachePolicy>::new(&labels.policy).within(&labels.namespace);
                    if shared.policies.get(&policy).is_none() {
                        shared.metrics.forget_policy(&labels);
                    }
                }
            }
        }
    };
    spawn_until(janitor, stop.clone());

    futures::future::join(instance_controller, policies).await;
}

/// A watch of `api` that retries with backoff, slims its objects ([`slim`]) and keeps
/// `writer`'s store up to date with every change, before any filter.
fn cached_watch<K>(
    api: Api<K>,
    wc: watcher::Config,
    writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watcher(api, wc)
        .default_backoff()
        .modify(slim::<K>)
        .reflect(writer)
}

/// The instances whose change matters to a policy ([`cache_policy::fetch::trigger_fingerprint`])
/// and the deleted ones, out of a watch of RedisInstances: a status refresh or a probe's live
/// figures wake no policy (at 1 000 instances they would wake it several times a second).
fn relevant_to_policies<S>(
    events: S,
    policies: reflector::Store<CachePolicy>,
) -> impl futures::Stream<Item = Result<RedisInstance, watcher::Error>>
where
    S: futures::Stream<Item = Result<watcher::Event<RedisInstance>, watcher::Error>>,
{
    let mut seen: std::collections::HashMap<ObjectRef<RedisInstance>, u64> =
        std::collections::HashMap::new();
    events.filter_map(move |event| {
        let out = match event {
            Ok(watcher::Event::Apply(ri) | watcher::Event::InitApply(ri)) => {
                let thresholds = cache_policy::fetch::thresholds_for(&policies, &ri);
                let fingerprint = cache_policy::fetch::trigger_fingerprint(&ri, &thresholds);
                let changed =
                    seen.insert(ObjectRef::from_obj(&ri), fingerprint) != Some(fingerprint);
                changed.then_some(Ok(ri))
            }
            Ok(watcher::Event::Delete(ri)) => {
                seen.remove(&ObjectRef::from_obj(&ri));
                Some(Ok(ri))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    })
}

/// What a controller's run reports, logged: failed reconciles and watch errors, but not objects
/// deleted before their reconcile ran.
fn log_failures<K, E, W>(
    controller: &'static str,
) -> impl FnMut(ControllerResult<K, E, W>) -> futures::future::Ready<()>
where
    K: Resource,
    E: std::error::Error + 'static,
    W: std::error::Error + 'static,
{
    move |result| {
        if let Err(e) = result
            && !matches!(e, controller::Error::ObjectNotFound(_))
        {
            warn!(error = %e, "{controller} controller");
        }
        futures::future::ready(())
    }
}

/// One result of a controller's run.
type ControllerResult<K, E, W> = Result<(ObjectRef<K>, Action), controller::Error<E, W>>;

/// Runs `task` in the background until it ends or `stop` turns true.
fn spawn_until<F>(task: F, stop: watch::Receiver<bool>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = stopped(stop) => {}
        }
    });
}

/// Drops what the operator never reads from an object before it is cached: the field managers
/// (often the largest part of a small object's metadata) and the copy `kubectl apply` keeps of
/// the last applied manifest. At 1 000 RedisInstances (cached twice), that is most of the
/// caches.
fn slim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}
